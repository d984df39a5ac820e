//! Task identity: the canonical encoding of a `TaskSpec` and its id.

use polity_proto::TaskSpec;
use sha2::{Digest, Sha256};

use crate::ids::TaskId;

/// Domain tag of task ids.
pub const TASK_TAG: &[u8] = b"polity/v1/task\0";

/// Largest canonical task encoding a certificate may carry.
pub const TASK_BYTES_MAX: usize = 1 << 20;

/// The canonical bytes of a task: its protobuf encoding. Encode once, at the entry
/// node, and carry the bytes; ids are computed over the bytes, never re-encoded.
pub fn encode_task(task: &TaskSpec) -> Vec<u8> {
    prost::Message::encode_to_vec(task)
}

/// `sha256("polity/v1/task\0" || task_bytes)`.
pub fn task_id(task_bytes: &[u8]) -> TaskId {
    let mut hasher = Sha256::new();
    hasher.update(TASK_TAG);
    hasher.update(task_bytes);
    TaskId(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(task: TaskSpec, expected_hex: &str) {
        assert_eq!(task_id(&encode_task(&task)).to_string(), expected_hex);
    }

    #[test]
    fn task_id_is_tagged_sha256() {
        // sha256("polity/v1/task\0"), computed independently with `printf | sha256sum`.
        check(
            TaskSpec::default(),
            "0d74e3075e12f91b0d6058818622ef576f1c59779777b44e0ec979b59c5846f0",
        );
    }

    #[test]
    fn nonce_changes_the_id() {
        let a = TaskSpec {
            nonce: 1,
            ..TaskSpec::default()
        };
        let b = TaskSpec {
            nonce: 2,
            ..TaskSpec::default()
        };
        assert_ne!(task_id(&encode_task(&a)), task_id(&encode_task(&b)));
    }
}

//! The byte layouts the sled store writes for ledger values and snapshots, with every
//! length checked on the way in: a corrupt disk or a bad snapshot is an error, never a
//! panic or an unbounded allocation.
//!
//! Ledger value (key = the 32-byte task id):
//! `report_len: u32 BE | report | has_certificate: u8 (0|1) | [certificate_len: u32 BE | certificate]`
//!
//! Snapshot data (the ledger; raft's own snapshot meta travels beside it):
//! `SNAPSHOT_MAGIC | count: u32 BE | count × (task_id: 32 bytes | value_len: u32 BE | value)`,
//! task ids strictly ascending.

use crate::types::{LEDGER_CERTIFICATE_BYTES_MAX, LEDGER_REPORT_BYTES_MAX, LedgerEntry};
use polity_consensus::ids::TaskId;

/// Most task decisions one group's ledger holds. A full ledger refuses new tasks
/// ([`crate::LedgerOutcome::LedgerFull`]) rather than grow a snapshot without bound.
pub const LEDGER_ENTRIES_MAX: usize = 65_536;
/// Most report plus certificate bytes one group's ledger holds.
pub const LEDGER_BYTES_MAX: usize = 128 << 20;

/// The first bytes of every snapshot; a version bump changes them.
pub const SNAPSHOT_MAGIC: &[u8] = b"polity/v1/raft-ledger-snapshot\0";
/// Fixed bytes per ledger value besides report and certificate.
const VALUE_OVERHEAD_BYTES: usize = 4 + 1 + 4;
/// Fixed bytes per snapshot record besides its value.
const RECORD_OVERHEAD_BYTES: usize = 32 + 4;
/// Largest ledger value.
pub const LEDGER_VALUE_BYTES_MAX: usize =
    VALUE_OVERHEAD_BYTES + LEDGER_REPORT_BYTES_MAX + LEDGER_CERTIFICATE_BYTES_MAX;
/// Largest snapshot: a full ledger. Snapshots are built and received in memory, so this is
/// also the memory a snapshot may take (about 131 MiB).
pub const SNAPSHOT_BYTES_MAX: usize = SNAPSHOT_MAGIC.len()
    + 4
    + LEDGER_ENTRIES_MAX * (RECORD_OVERHEAD_BYTES + VALUE_OVERHEAD_BYTES)
    + LEDGER_BYTES_MAX;

/// Why stored or received bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("{what} of {length_bytes} bytes exceeds {max_bytes}")]
    TooLarge {
        what: &'static str,
        length_bytes: usize,
        max_bytes: usize,
    },
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("bad certificate flag {0}")]
    BadFlag(u8),
    #[error("not a polity ledger snapshot")]
    BadMagic,
    #[error("task ids not strictly ascending at record {index}")]
    Unordered { index: usize },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

/// The stored value of a ledger entry.
pub fn encode_value(entry: &LedgerEntry) -> Vec<u8> {
    debug_assert!(entry.report.len() <= LEDGER_REPORT_BYTES_MAX);
    let mut out = Vec::with_capacity(VALUE_OVERHEAD_BYTES + entry.payload_bytes());
    put_u32(&mut out, entry.report.len());
    out.extend_from_slice(&entry.report);
    match &entry.certificate {
        None => out.push(0),
        Some(certificate) => {
            debug_assert!(certificate.len() <= LEDGER_CERTIFICATE_BYTES_MAX);
            out.push(1);
            put_u32(&mut out, certificate.len());
            out.extend_from_slice(certificate);
        }
    }
    out
}

/// Decodes a stored ledger value.
pub fn decode_value(task_id: TaskId, bytes: &[u8]) -> Result<LedgerEntry, CodecError> {
    let mut reader = Reader { bytes };
    let report = reader.chunk("report", LEDGER_REPORT_BYTES_MAX)?.to_vec();
    let certificate = match reader.take("certificate flag", 1)?[0] {
        0 => None,
        1 => Some(
            reader
                .chunk("certificate", LEDGER_CERTIFICATE_BYTES_MAX)?
                .to_vec(),
        ),
        flag => return Err(CodecError::BadFlag(flag)),
    };
    reader.finish()?;
    Ok(LedgerEntry {
        task_id,
        report,
        certificate,
    })
}

/// Writes a snapshot from `(task id, stored value)` records in ascending key order, as a
/// sled tree iterates them. Refuses anything a [`decode_snapshot`] would refuse.
pub fn encode_snapshot<E>(
    records: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
) -> Result<Vec<u8>, SnapshotEncodeError<E>> {
    let mut out = Vec::new();
    out.extend_from_slice(SNAPSHOT_MAGIC);
    put_u32(&mut out, 0); // count, patched below
    let mut count = 0usize;
    for record in records {
        let (key, value) = record.map_err(SnapshotEncodeError::Source)?;
        if count == LEDGER_ENTRIES_MAX {
            return Err(SnapshotEncodeError::Codec(CodecError::TooLarge {
                what: "ledger entry count",
                length_bytes: count + 1,
                max_bytes: LEDGER_ENTRIES_MAX,
            }));
        }
        let task_id = TaskId::from_slice(&key).map_err(|error| {
            SnapshotEncodeError::Codec(CodecError::Invalid {
                what: "ledger key",
                detail: error.to_string(),
            })
        })?;
        // Re-validate what the disk gave us before shipping it to another member.
        decode_value(task_id, &value).map_err(SnapshotEncodeError::Codec)?;
        out.extend_from_slice(&key);
        put_u32(&mut out, value.len());
        out.extend_from_slice(&value);
        count += 1;
        if out.len() > SNAPSHOT_BYTES_MAX {
            return Err(SnapshotEncodeError::Codec(CodecError::TooLarge {
                what: "snapshot",
                length_bytes: out.len(),
                max_bytes: SNAPSHOT_BYTES_MAX,
            }));
        }
    }
    let count_at = SNAPSHOT_MAGIC.len();
    out[count_at..count_at + 4].copy_from_slice(&(count as u32).to_be_bytes());
    Ok(out)
}

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotEncodeError<E> {
    #[error("reading the ledger: {0}")]
    Source(E),
    #[error(transparent)]
    Codec(CodecError),
}

/// A decoded snapshot: the ledger's records, validated, with the totals the state
/// machine keeps.
#[derive(Debug, Default)]
pub struct DecodedSnapshot {
    /// `(task id, stored value)` in ascending order.
    pub records: Vec<(TaskId, Vec<u8>)>,
    /// Sum of report and certificate bytes.
    pub payload_bytes: usize,
}

/// Decodes and validates snapshot data.
pub fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot, CodecError> {
    if bytes.len() > SNAPSHOT_BYTES_MAX {
        return Err(CodecError::TooLarge {
            what: "snapshot",
            length_bytes: bytes.len(),
            max_bytes: SNAPSHOT_BYTES_MAX,
        });
    }
    let mut reader = Reader { bytes };
    if reader.take("snapshot magic", SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
        return Err(CodecError::BadMagic);
    }
    let count = reader.u32("snapshot count")?;
    if count > LEDGER_ENTRIES_MAX {
        return Err(CodecError::TooLarge {
            what: "ledger entry count",
            length_bytes: count,
            max_bytes: LEDGER_ENTRIES_MAX,
        });
    }
    let mut decoded = DecodedSnapshot {
        records: Vec::with_capacity(count),
        payload_bytes: 0,
    };
    for index in 0..count {
        let task_id = TaskId::from_slice(reader.take("task id", 32)?).map_err(|error| {
            CodecError::Invalid {
                what: "task id",
                detail: error.to_string(),
            }
        })?;
        if decoded
            .records
            .last()
            .is_some_and(|(last, _)| *last >= task_id)
        {
            return Err(CodecError::Unordered { index });
        }
        let value = reader.chunk("ledger value", LEDGER_VALUE_BYTES_MAX)?;
        let entry = decode_value(task_id, value)?;
        decoded.payload_bytes += entry.payload_bytes();
        if decoded.payload_bytes > LEDGER_BYTES_MAX {
            return Err(CodecError::TooLarge {
                what: "ledger payload",
                length_bytes: decoded.payload_bytes,
                max_bytes: LEDGER_BYTES_MAX,
            });
        }
        decoded.records.push((task_id, value.to_vec()));
    }
    reader.finish()?;
    debug_assert_eq!(decoded.records.len(), count);
    Ok(decoded)
}

fn put_u32(out: &mut Vec<u8>, length: usize) {
    let length = u32::try_from(length).expect("lengths are bounded far below u32::MAX");
    out.extend_from_slice(&length.to_be_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, length: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < length {
            return Err(CodecError::Truncated { what });
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, CodecError> {
        let mut be = [0u8; 4];
        be.copy_from_slice(self.take(what, 4)?);
        Ok(u32::from_be_bytes(be) as usize)
    }

    /// A `u32`-length-prefixed chunk of at most `max_bytes`.
    fn chunk(&mut self, what: &'static str, max_bytes: usize) -> Result<&'a [u8], CodecError> {
        let length = self.u32(what)?;
        if length > max_bytes {
            return Err(CodecError::TooLarge {
                what,
                length_bytes: length,
                max_bytes,
            });
        }
        self.take(what, length)
    }

    fn finish(self) -> Result<(), CodecError> {
        match self.bytes.len() {
            0 => Ok(()),
            trailing => Err(CodecError::Trailing(trailing)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    fn entry(id: u8, report: &[u8], certificate: Option<&[u8]>) -> LedgerEntry {
        LedgerEntry::new(
            TaskId([id; 32]),
            report.to_vec(),
            certificate.map(<[u8]>::to_vec),
        )
        .unwrap()
    }

    fn snapshot_of(entries: &[LedgerEntry]) -> Vec<u8> {
        let records = entries
            .iter()
            .map(|e| Ok::<_, Infallible>((e.task_id.0.to_vec(), encode_value(e))));
        encode_snapshot(records).unwrap()
    }

    #[test]
    fn corrupt_values_are_errors() {
        let good = encode_value(&entry(1, b"report", Some(b"cert")));
        let task = TaskId([1; 32]);
        for cut in 0..good.len() {
            assert!(decode_value(task, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_value(task, &trailing), Err(CodecError::Trailing(1)));
        let mut flag = encode_value(&entry(1, b"r", None));
        *flag.last_mut().unwrap() = 7;
        assert_eq!(decode_value(task, &flag), Err(CodecError::BadFlag(7)));
        let huge = (u32::MAX).to_be_bytes();
        assert!(matches!(
            decode_value(task, &huge),
            Err(CodecError::TooLarge { what: "report", .. })
        ));
    }

    #[test]
    fn corrupt_snapshots_are_errors() {
        let entries = [entry(1, b"a", None), entry(2, b"b", Some(b"c"))];
        let good = snapshot_of(&entries);
        assert_eq!(decode_snapshot(&good).unwrap().records.len(), 2);
        for cut in 0..good.len() {
            assert!(decode_snapshot(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert_eq!(decode_snapshot(&magic).unwrap_err(), CodecError::BadMagic);
        let unordered = snapshot_of(&[entries[1].clone(), entries[0].clone()]);
        assert_eq!(
            decode_snapshot(&unordered).unwrap_err(),
            CodecError::Unordered { index: 1 }
        );
        let mut count = good.clone();
        count[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 4]
            .copy_from_slice(&(LEDGER_ENTRIES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode_snapshot(&count),
            Err(CodecError::TooLarge {
                what: "ledger entry count",
                ..
            })
        ));
        let records = (0..=LEDGER_ENTRIES_MAX as u32).map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            Ok::<_, Infallible>((key.to_vec(), encode_value(&entry(0, b"x", None))))
        });
        assert!(matches!(
            encode_snapshot(records),
            Err(SnapshotEncodeError::Codec(CodecError::TooLarge { .. }))
        ));
    }

    proptest! {
        #[test]
        fn values_and_snapshots_round_trip(
            ledger in proptest::collection::btree_map(
                any::<[u8; 32]>(),
                (proptest::collection::vec(any::<u8>(), 1..64),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))),
                0..16,
            )
        ) {
            let entries: Vec<LedgerEntry> = ledger
                .into_iter()
                .map(|(id, (report, certificate))| LedgerEntry::new(TaskId(id), report, certificate).unwrap())
                .collect();
            for e in &entries {
                prop_assert_eq!(&decode_value(e.task_id, &encode_value(e)).unwrap(), e);
            }
            let decoded = decode_snapshot(&snapshot_of(&entries)).unwrap();
            let back: Vec<LedgerEntry> = decoded
                .records
                .iter()
                .map(|(id, value)| decode_value(*id, value).unwrap())
                .collect();
            prop_assert_eq!(decoded.payload_bytes, entries.iter().map(LedgerEntry::payload_bytes).sum::<usize>());
            prop_assert_eq!(back, entries);
        }
    }
}

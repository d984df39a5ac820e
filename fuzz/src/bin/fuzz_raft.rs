//! AFL++ target: [`polity_fuzz::raft`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::raft(data));
}

//! AFL++ target: [`polity_fuzz::node_info`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::node_info(data));
}

//! AFL++ target: [`polity_fuzz::registry`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::registry(data));
}

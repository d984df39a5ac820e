//! AFL++ target: [`polity_fuzz::export`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::export(data));
}

//! AFL++ target: [`polity_fuzz::certificate`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::certificate(data));
}

//! AFL++ target: [`polity_fuzz::frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::frame(data));
}

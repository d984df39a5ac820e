//! AFL++ target: [`polity_fuzz::config`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::config(data));
}

//! AFL++ target: [`polity_fuzz::statement`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::statement(data));
}

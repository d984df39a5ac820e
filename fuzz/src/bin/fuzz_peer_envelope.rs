//! AFL++ target: [`polity_fuzz::peer_envelope`].

fn main() {
    afl::fuzz!(|data: &[u8]| polity_fuzz::peer_envelope(data));
}

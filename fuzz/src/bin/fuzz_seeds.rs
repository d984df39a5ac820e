//! Writes the seed inputs of [`polity_fuzz::seeds`] to `fuzz/corpus/<target>/seed-<n>`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in polity_fuzz::seeds::seeds() {
        let directory = root.join(target);
        std::fs::create_dir_all(&directory)?;
        for (index, seed) in seeds.iter().enumerate() {
            std::fs::write(directory.join(format!("seed-{index}")), seed)?;
        }
    }
    Ok(())
}

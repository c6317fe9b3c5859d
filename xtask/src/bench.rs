pub fn run(_lynx: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}

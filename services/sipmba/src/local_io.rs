//! What the binary writes on this machine: lines on standard output, and files only their owner
//! reads (logins, the `--dev` admin token and state).

use std::{io::Write, path::Path};

/// Writes a line to standard output; false when it is gone (a closed pipe: `| head`), which is
/// not worth a panic.
pub fn out(line: impl std::fmt::Display) -> bool {
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

/// Writes `bytes` to a new file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

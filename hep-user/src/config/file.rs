//! Reading a configuration file safely: only a regular file, of a bounded size, and never
//! blocking on open (a FIFO or a device given as the configuration would otherwise stall
//! `check-config`, the start, or a reload and with it the signal handling).

use std::fs::{FileType, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// The largest configuration file read, bytes (4 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Why a configuration file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// It is not a regular file (a FIFO, a socket, a device, a directory).
    #[error("not a regular file ({kind})")]
    NotRegular {
        /// What it is.
        kind: &'static str,
    },
    /// It is larger than [`MAX_CONFIG_BYTES`].
    #[error("{size} bytes, larger than the limit of {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// Its size (at least), bytes.
        size: u64,
    },
    /// Reading it failed (missing, unreadable, not UTF-8).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a file type is, in words.
fn kind_of(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Checks that `file_type` and `size` are those of a configuration file that can be read.
fn check(file_type: FileType, size: u64) -> Result<(), ConfigFileError> {
    if !file_type.is_file() {
        return Err(ConfigFileError::NotRegular {
            kind: kind_of(file_type),
        });
    }
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge { size });
    }
    Ok(())
}

/// Reads the configuration file `path` as text: checked to be a regular file of at most
/// [`MAX_CONFIG_BYTES`] before it is opened, opened without blocking (`O_NONBLOCK`), and
/// checked again on the open file (it may have been replaced in between).
pub fn read_config_file(path: &Path) -> Result<String, ConfigFileError> {
    let metadata = std::fs::metadata(path)?;
    check(metadata.file_type(), metadata.len())?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let metadata = file.metadata()?;
    check(metadata.file_type(), metadata.len())?;
    let mut text = String::new();
    // One byte past the limit tells a file that grew since the check.
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    let size = text.len() as u64;
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge { size });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_and_a_directory_or_a_large_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("hepfwd-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.toml");
        std::fs::write(&small, "[admin]\n").unwrap();
        assert_eq!(read_config_file(&small).unwrap(), "[admin]\n");
        let large = dir.join("large.toml");
        std::fs::File::create(&large)
            .unwrap()
            .set_len(MAX_CONFIG_BYTES + 1)
            .unwrap();
        assert!(matches!(
            read_config_file(&large),
            Err(ConfigFileError::TooLarge { .. })
        ));
        assert!(matches!(
            read_config_file(&dir),
            Err(ConfigFileError::NotRegular {
                kind: "a directory"
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

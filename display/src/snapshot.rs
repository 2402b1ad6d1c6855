//! PNG snapshots of a frame.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use crate::format::Frame;

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Creating, writing or renaming the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The PNG encoder refused the picture.
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
}

/// Encodes `frame` as an 8-bit RGB PNG into `out`. Tuned for speed (a live display, not an
/// archive): fast deflate, the `Sub` filter.
pub fn encode_png<W: Write>(frame: &Frame<'_>, out: W) -> Result<(), SnapshotError> {
    let rgb = frame.to_rgb8();
    PngEncoder::new_with_quality(out, CompressionType::Fast, FilterType::Sub).write_image(
        &rgb,
        frame.width(),
        frame.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(())
}

/// Writes `frame` to `path` as a PNG. The file appears whole or not at all: the picture is
/// written next to it and renamed into place.
pub fn save_png(frame: &Frame<'_>, path: &Path) -> Result<(), SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let file = fs::File::create(&tmp).map_err(io_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let written = encode_png(frame, &mut out).and_then(|()| out.flush().map_err(io_err));
    drop(out);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Mode, PixelFormat};

    #[test]
    fn a_png_decodes_to_the_same_pixels() {
        let mode = Mode::packed(PixelFormat::Rgb565, 3, 2);
        let colours = [
            [0xff, 0, 0],
            [0, 0xff, 0],
            [0, 0, 0xff],
            [0xff; 3],
            [0; 3],
            [0xff, 0xff, 0],
        ];
        let fb: Vec<u8> = colours
            .iter()
            .flat_map(|c| PixelFormat::Rgb565.from_rgb(*c))
            .collect();
        let frame = Frame::new(mode, &fb).unwrap();
        let dir = std::env::temp_dir().join(format!("snap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.png");
        save_png(&frame, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.into_raw(), colours.concat());
        fs::remove_dir_all(&dir).unwrap();
    }
}

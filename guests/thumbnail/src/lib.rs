//! Thumbnail worker: for each message naming an image blob, writes a thumbnail of it.
//!
//! Naturally idempotent: the same image always gives the same thumbnail, written to the same
//! name, so a message handled twice does no harm.
//!
//! Settings: `queue` (default `thumbnails`), `source` container (default `images`), `target`
//! container (default `thumbnails`), `size` in pixels of the longer side (default 128).

use std::io::Write;

use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use rolehost_sdk::{Container, QueueProcessor, WorkerRole, env};

struct Thumbnailer {
    queue: String,
    source: Container,
    target: Container,
    size: u32,
}

impl WorkerRole for Thumbnailer {
    fn on_start() -> Result<Self, String> {
        let setting =
            |name: &str, default: &str| env::setting(name).unwrap_or_else(|| default.into());
        let size = setting("size", "128")
            .parse::<u32>()
            .map_err(|e| format!("setting `size`: {e}"))?;
        let role = Thumbnailer {
            queue: setting("queue", "thumbnails"),
            source: Container::new(setting("source", "images")),
            target: Container::new(setting("target", "thumbnails")),
            size,
        };
        for c in [&role.source, &role.target] {
            c.create_if_not_exists().map_err(|e| e.to_string())?;
        }
        Ok(role)
    }

    fn run(&mut self) -> Result<(), String> {
        QueueProcessor::new(&self.queue)
            .run(|job| self.make_thumbnail(job.body_str().trim()))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Thumbnailer {
    fn make_thumbnail(&self, name: &str) -> Result<(), String> {
        let (bytes, _) = self
            .source
            .blob(name)
            .get()
            .map_err(|e| format!("reading {name}: {e}"))?;
        let img = image::load_from_memory(&bytes).map_err(|e| format!("decoding {name}: {e}"))?;
        let thumb = img.thumbnail(self.size, self.size).to_rgba8();
        let out_name = format!("{name}.thumb.png");
        let mut writer = self
            .target
            .blob(&out_name)
            .writer_with(rolehost_sdk::PutOptions::default().content_type("image/png"));
        PngEncoder::new(&mut writer)
            .write_image(
                &thumb,
                thumb.width(),
                thumb.height(),
                image::ExtendedColorType::Rgba8,
            )
            .map_err(|e| format!("encoding {out_name}: {e}"))?;
        writer.flush().map_err(|e| e.to_string())?;
        let props = writer
            .finish()
            .map_err(|e| format!("writing {out_name}: {e}"))?;
        env::info(&format!(
            "thumbnail {out_name}: {}x{} -> {}x{} ({} bytes)",
            img.width(),
            img.height(),
            thumb.width(),
            thumb.height(),
            props.size
        ));
        Ok(())
    }
}

rolehost_sdk::worker!(Thumbnailer);

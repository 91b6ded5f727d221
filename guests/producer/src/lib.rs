//! Producer worker for the demo: every `interval-ms` (default 2000) it draws an image, puts it
//! in the `images` container, and asks for a thumbnail (queue `thumbnails`) and a count (queue
//! `increments`). It stops producing after `count` images when that setting is given.

use std::io::Cursor;

use image::{ImageBuffer, ImageFormat, Rgb};
use rolehost_sdk::{Container, Queue, WorkerRole, env};

struct Producer {
    made: u64,
}

impl WorkerRole for Producer {
    fn on_start() -> Result<Self, String> {
        Ok(Producer { made: 0 })
    }

    fn run(&mut self) -> Result<(), String> {
        let interval = env::setting("interval-ms")
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        let limit: Option<u64> = env::setting("count").and_then(|s| s.parse().ok());
        let images = Container::new("images");
        let thumbnails = Queue::new("thumbnails");
        let increments = Queue::new("increments");
        images.create_if_not_exists().map_err(|e| e.to_string())?;
        thumbnails
            .create_if_not_exists()
            .map_err(|e| e.to_string())?;
        increments
            .create_if_not_exists()
            .map_err(|e| e.to_string())?;
        let me = env::instance_id();
        while !env::wait_for_stop(std::time::Duration::from_millis(interval)) {
            if limit.is_some_and(|l| self.made >= l) {
                continue;
            }
            self.made += 1;
            let name = format!("{me}-{:04}.png", self.made);
            let png = draw(self.made).map_err(|e| e.to_string())?;
            images.blob(&name).put(&png).map_err(|e| e.to_string())?;
            thumbnails.put(name.as_bytes()).map_err(|e| e.to_string())?;
            increments.put(b"images").map_err(|e| e.to_string())?;
            env::info(&format!(
                "made {name} ({} bytes), asked for its thumbnail",
                png.len()
            ));
        }
        Ok(())
    }
}

/// A 640x480 gradient whose colours depend on `n`.
fn draw(n: u64) -> image::ImageResult<Vec<u8>> {
    let hue = (n * 47 % 256) as u8;
    let img = ImageBuffer::from_fn(640, 480, |x, y| {
        Rgb([
            (x * 255 / 640) as u8 ^ hue,
            (y * 255 / 480) as u8,
            hue.wrapping_add((x + y) as u8),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

rolehost_sdk::worker!(Producer);

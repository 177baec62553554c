//! Reading progress out of tool output: the line yt-dlp prints through our
//! `--progress-template`, and its "Downloading item N of M" lines.

/// What yt-dlp prints before each progress line (see [`PROGRESS_TEMPLATE`]).
pub const PROGRESS_PREFIX: &str = "[jobq-progress] ";

/// The `--progress-template` the download jobs pass to yt-dlp:
/// `[jobq-progress] INDEX/COUNT DOWNLOADED/TOTAL SPEED ETA`, fields empty when unknown.
pub const PROGRESS_TEMPLATE: &str = "download:[jobq-progress] %(info.playlist_index|)s/%(info.n_entries|)s \
     %(progress.downloaded_bytes|)s/%(progress.total_bytes,progress.total_bytes_estimate|)s \
     %(progress.speed|)s %(progress.eta|)s";

/// What yt-dlp prints (through `--print after_move:`) for every finished file.
pub const FILE_PREFIX: &str = "[jobq-file] ";

/// One parsed progress line.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadProgress {
    /// Position of the item in the playlist (1-based), if in one.
    pub item: Option<u32>,
    /// Number of items in the playlist, if known.
    pub items: Option<u32>,
    /// Bytes of the current item so far.
    pub downloaded_bytes: u64,
    /// Total bytes of the current item, if known (or estimated).
    pub total_bytes: Option<u64>,
    /// Bytes per second, if known.
    pub speed: Option<f64>,
    /// Seconds left on the current item, if known.
    pub eta_seconds: Option<u64>,
}

impl DownloadProgress {
    /// Overall percent, 0..100: the finished items plus the fraction of the
    /// current one. `None` when the size of the current item is unknown.
    pub fn percent(&self) -> Option<i32> {
        let fraction = match self.total_bytes {
            Some(total) if total > 0 => {
                (self.downloaded_bytes as f64 / total as f64).clamp(0.0, 1.0)
            }
            _ => return None,
        };
        let overall = match (self.item, self.items) {
            (Some(item), Some(items)) if items > 0 && item >= 1 => {
                ((f64::from(item) - 1.0) + fraction) / f64::from(items)
            }
            _ => fraction,
        };
        Some((overall * 100.0).floor() as i32)
    }

    /// A short human message: `item 2/5: 3.1 MiB of 10.0 MiB at 1.2 MiB/s, 6 s left`.
    pub fn message(&self) -> String {
        let mut message = String::new();
        if let (Some(item), Some(items)) = (self.item, self.items) {
            message.push_str(&format!("item {item}/{items}: "));
        }
        message.push_str(&human_bytes(self.downloaded_bytes));
        if let Some(total) = self.total_bytes {
            message.push_str(&format!(" of {}", human_bytes(total)));
        }
        if let Some(speed) = self.speed
            && speed.is_finite()
            && speed > 0.0
        {
            message.push_str(&format!(" at {}/s", human_bytes(speed as u64)));
        }
        if let Some(eta) = self.eta_seconds {
            message.push_str(&format!(", {eta} s left"));
        }
        message
    }
}

/// Parses a `[jobq-progress] ...` line; `None` for any other line.
pub fn parse_progress_line(line: &str) -> Option<DownloadProgress> {
    let rest = line.trim_end().strip_prefix(PROGRESS_PREFIX)?;
    let mut fields = rest.split(' ');
    let (item, items) = fields.next()?.split_once('/')?;
    let (downloaded, total) = fields.next()?.split_once('/')?;
    let speed = fields.next().unwrap_or_default();
    let eta = fields.next().unwrap_or_default();
    Some(DownloadProgress {
        item: number(item),
        items: number(items),
        downloaded_bytes: number_u64(downloaded)?,
        total_bytes: number_u64(total),
        speed: speed.parse::<f64>().ok().filter(|speed| speed.is_finite()),
        eta_seconds: number_u64(eta),
    })
}

/// `[download] Downloading item 3 of 7` → `(3, 7)`.
pub fn parse_item_line(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim().strip_prefix("[download] Downloading item ")?;
    let (item, items) = rest.split_once(" of ")?;
    Some((item.trim().parse().ok()?, items.trim().parse().ok()?))
}

/// A line saying an entry was skipped because the archive has it.
pub fn is_already_archived_line(line: &str) -> bool {
    line.contains("has already been recorded in the archive")
}

fn number(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

/// yt-dlp sometimes prints byte counts as floats (`1024.0`).
fn number_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    text.parse::<u64>().ok().or_else(|| {
        let value = text.parse::<f64>().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value as u64)
    })
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_video_line() {
        let progress = parse_progress_line("[jobq-progress] / 7168/12330 3760446.66 0");
        let expected = DownloadProgress {
            item: None,
            items: None,
            downloaded_bytes: 7168,
            total_bytes: Some(12330),
            speed: Some(3760446.66),
            eta_seconds: Some(0),
        };
        assert_eq!(progress, Some(expected));
        assert_eq!(progress.and_then(|p| p.percent()), Some(58));
    }

    #[test]
    fn a_playlist_line_counts_finished_items() {
        let progress = parse_progress_line("[jobq-progress] 2/4 50/100  ");
        assert_eq!(
            progress.as_ref().and_then(DownloadProgress::percent),
            Some(37)
        );
        assert_eq!(
            progress.map(|p| p.message()),
            Some("item 2/4: 50 B of 100 B".to_owned())
        );
    }

    #[test]
    fn unknown_total_has_no_percent() {
        let progress = parse_progress_line("[jobq-progress] / 1024/ NA NA");
        assert_eq!(progress.as_ref().map(|p| p.total_bytes), Some(None));
        assert_eq!(progress.and_then(|p| p.percent()), None);
    }

    #[test]
    fn float_byte_counts_and_junk() {
        let progress = parse_progress_line("[jobq-progress] 1/1 1024.0/2048.5 x y");
        assert_eq!(
            progress.map(|p| (p.downloaded_bytes, p.total_bytes)),
            Some((1024, Some(2048)))
        );
        assert_eq!(parse_progress_line("[download] 50.0% of 10MiB"), None);
        assert_eq!(parse_progress_line("[jobq-progress] garbage"), None);
    }

    #[test]
    fn item_and_archive_lines() {
        assert_eq!(
            parse_item_line("[download] Downloading item 3 of 7"),
            Some((3, 7))
        );
        assert_eq!(parse_item_line("[download] Destination: x"), None);
        assert!(is_already_archived_line(
            "[download] list-1: My Channel (1) has already been recorded in the archive"
        ));
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }
}

//! The loss curves of a run as a PNG: training loss in blue, validation loss in orange, on a
//! logarithmic loss axis (late improvements stay visible next to the first epochs' large
//! losses), with a grey line at the epoch whose weights were kept.
//!
//! plotters is built without its system font stack (font-kit needs fontconfig), so text is
//! drawn only when a TrueType font is found at a well-known path and registered with plotters'
//! pure-Rust `ab_glyph` renderer. Without one the chart is still drawn, with its frame, grid and
//! curves in the same two colours, but with no text at all: caption, tick labels and legend are
//! left out rather than failing the run.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::fit::EpochStats;
use super::TrainError;

const TRAINING: RGBColor = RGBColor(31, 119, 180);
const VALIDATION: RGBColor = RGBColor(255, 127, 14);
const BEST: RGBColor = RGBColor(150, 150, 150);
const SIZE: (u32, u32) = (960, 540);

/// Fonts tried in order: Debian/Ubuntu, Fedora, Arch, Alpine, macOS, Windows.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Writes `history` as a PNG at `path`, marking `best_epoch`, with `title` as the caption when
/// a font is available.
pub fn write_loss_plot(
    path: &Path,
    history: &[EpochStats],
    best_epoch: usize,
    title: &str,
) -> Result<(), TrainError> {
    draw(path, history, best_epoch, font_available().then_some(title)).map_err(|message| {
        TrainError::Plot {
            path: path.display().to_string(),
            message,
        }
    })
}

/// Whether a font is registered with plotters as "sans-serif"; looked for once per process.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|path| match std::fs::read(path) {
            // plotters keeps registered fonts for the life of the process, so the bytes must
            // be 'static; this runs at most once.
            Ok(bytes) => register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        })
    })
}

/// Draws the chart; `title` is `None` when no text can be rendered.
fn draw(
    path: &Path,
    history: &[EpochStats],
    best_epoch: usize,
    title: Option<&str>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let last = history.last().ok_or("no epochs to plot")?;
    let losses = || history.iter().flat_map(|e| [e.train_loss, e.val_loss]);
    let high = losses().fold(f64::MIN_POSITIVE, f64::max);
    // A loss of exactly 0 has no place on a log axis; it is drawn at the bottom instead.
    let floor = high * 1e-9;
    let low = losses().fold(high, |m, v| m.min(v.max(floor)));
    let (low, high) = (low / 1.25, high * 1.25);
    let epochs = 1..last.epoch.max(2);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(24);
    if let Some(title) = title {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(48)
            .y_label_area_size(84);
    }
    let mut chart = builder
        .build_cartesian_2d(epochs.clone(), (low..high).log_scale())
        .map_err(|e| err(&e))?;

    let grey = RGBColor(225, 225, 225);
    if title.is_some() {
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(grey)
            .x_desc("epoch")
            .y_desc("loss")
            .y_label_formatter(&|v| short(*v))
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(|e| err(&e))?;
    } else {
        // The same grid without tick labels: decades across, tenths of the run down.
        let mut decade = 10f64.powf(low.log10().floor());
        while decade <= high {
            if decade >= low {
                chart
                    .draw_series([PathElement::new(
                        vec![(epochs.start, decade), (epochs.end, decade)],
                        grey,
                    )])
                    .map_err(|e| err(&e))?;
            }
            decade *= 10.0;
        }
        let step = (epochs.end / 10).max(1);
        for epoch in (epochs.start..=epochs.end).step_by(step) {
            chart
                .draw_series([PathElement::new(vec![(epoch, low), (epoch, high)], grey)])
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series([Rectangle::new(
                [(epochs.start, low), (epochs.end, high)],
                BLACK,
            )])
            .map_err(|e| err(&e))?;
    }

    chart
        .draw_series([PathElement::new(
            vec![(best_epoch, low), (best_epoch, high)],
            BEST.stroke_width(1),
        )])
        .map_err(|e| err(&e))?
        .label("best epoch")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BEST));
    for (name, colour, loss) in [
        (
            "training",
            TRAINING,
            (|e: &EpochStats| e.train_loss) as fn(&EpochStats) -> f64,
        ),
        ("validation", VALIDATION, |e: &EpochStats| e.val_loss),
    ] {
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|e| (e.epoch, loss(e).max(floor))),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
    }
    if title.is_some() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// At most three significant digits, in scientific notation outside [0.01, 10000).
fn short(v: f64) -> String {
    if !(0.01..10_000.0).contains(&v.abs()) {
        return format!("{v:.2e}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{v:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> Vec<EpochStats> {
        (1..=60)
            .map(|epoch| {
                let t = epoch as f64;
                EpochStats {
                    epoch,
                    train_loss: 2.0 / t + 0.01,
                    val_loss: 2.0 / t + 0.02 + 0.0004 * t,
                    val_metric: 0.0,
                }
            })
            .collect()
    }

    #[test]
    fn draws_a_png_with_and_without_text() {
        let dir = tempfile::tempdir().unwrap();
        for (name, title) in [("plain.png", None), ("text.png", Some("test run"))] {
            if title.is_some() && !font_available() {
                continue;
            }
            let path = dir.path().join(name);
            draw(&path, &history(), 22, title).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name}");
        }
        let err = write_loss_plot(&dir.path().join("x.png"), &[], 1, "t").unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(2915.6), "2916");
        assert_eq!(short(0.0523), "0.0523");
        assert_eq!(short(1.5), "1.5");
        assert_eq!(short(0.1), "0.1");
        assert_eq!(short(100.0), "100");
        assert_eq!(short(0.001234), "1.23e-3");
    }
}

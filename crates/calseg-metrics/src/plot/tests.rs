//! Unit tests of the figures: bars, files, formats, panels.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array2, Array3};
use plotters::style::RGBColor;

use super::*;

/// `n` equal-width bins; those in `empty` have no samples. Non-empty bin `b` is
/// over-confident: confidence at the bin centre, accuracy 0.75 × confidence, and it holds
/// `10 · (b + 1)` samples.
fn bins(n: usize, empty: &[usize]) -> Vec<ReliabilityBin> {
    (0..n)
        .map(|b| {
            let (lower, upper) = (b as f64 / n as f64, (b + 1) as f64 / n as f64);
            let count = if empty.contains(&b) {
                0
            } else {
                10 * (b as u64 + 1)
            };
            // NaN for an empty bin, as the accumulators report it.
            let confidence = if count == 0 {
                f64::NAN
            } else {
                (lower + upper) / 2.0
            };
            let accuracy = 0.75 * confidence;
            ReliabilityBin {
                lower,
                upper,
                count,
                confidence,
                accuracy,
            }
        })
        .collect()
}

/// A fresh, empty folder under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "calseg-plot-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let names: std::collections::BTreeSet<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.into_iter().collect()
}

fn fill_count(svg: &str, color: RGBColor) -> usize {
    let needle = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
    svg.matches(&needle).count()
}

fn svg_of(bins: &[ReliabilityBin], opts: &PlotOptions) -> String {
    String::from_utf8(render_reliability_diagram(bins, opts, PlotFormat::Svg).unwrap()).unwrap()
}

#[test]
fn svg_draws_one_bar_per_non_empty_bin() {
    let opts = PlotOptions {
        title: "ECE = 0.123".into(),
        ..PlotOptions::default()
    };
    for empty in [
        &[][..],
        &[0, 1, 2],
        &[3, 7, 9],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    ] {
        let b = bins(10, empty);
        let non_empty = 10 - empty.len();
        let svg = svg_of(&b, &opts);
        // One accuracy bar and one gap bar per non-empty bin, plus one legend swatch each.
        assert_eq!(
            fill_count(&svg, ACC_FILL),
            non_empty + 1,
            "empty = {empty:?}"
        );
        assert_eq!(
            fill_count(&svg, GAP_RED),
            non_empty + 1,
            "empty = {empty:?}"
        );
        assert_eq!(fill_count(&svg, HIST_FILL), non_empty, "empty = {empty:?}");
        for text in [
            "ECE = 0.123",
            "Confidence",
            "Accuracy",
            "Perfect calibration",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
    }
    let no_hist = PlotOptions {
        show_histogram: false,
        ..PlotOptions::default()
    };
    let svg = svg_of(&bins(10, &[1]), &no_hist);
    assert_eq!(fill_count(&svg, HIST_FILL), 0);
    assert_eq!(fill_count(&svg, ACC_FILL), 10);
    assert!(svg.contains("Confidence"));
}

#[test]
fn bar_heights_follow_accuracy() {
    // One non-empty bin [0.5, 0.6] with accuracy 0.25: its bar is a quarter of the
    // plot height and the gap bar spans 0.25..0.55.
    let mut b = bins(10, &[0, 1, 2, 3, 4, 6, 7, 8, 9]);
    b[5].accuracy = 0.25;
    let opts = PlotOptions {
        show_histogram: false,
        ..PlotOptions::default()
    };
    let svg = svg_of(&b, &opts);
    let rect_height = |color: RGBColor| -> Vec<f64> {
        let needle = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.lines()
            .filter(|l| l.contains("<rect") && l.contains(&needle))
            .map(|l| {
                let h = l.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse::<f64>().unwrap()
            })
            .collect()
    };
    // First entry: the bar; second: the legend swatch (10 px).
    let acc = rect_height(ACC_FILL);
    let gap = rect_height(GAP_RED);
    assert_eq!(acc.len(), 2);
    assert_eq!(gap.len(), 2);
    let ratio = gap[0] / acc[0];
    assert!(
        (ratio - 0.30 / 0.25).abs() < 0.03,
        "gap/bar height ratio {ratio}"
    );
}

#[test]
fn png_file_has_magic_size_and_bars() {
    let dir = temp_dir("png");
    let path = dir.join("diagram.PNG");
    let opts = PlotOptions {
        width: 480,
        height: 520,
        ..PlotOptions::default()
    };
    reliability_diagram(&bins(10, &[0, 1]), &opts, &path).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (480, 520));
    assert_eq!(entries(&dir), vec!["diagram.PNG".to_owned()]);

    // Decode and count accuracy-bar pixels: many with 8 bars, only the legend swatch
    // when every bin is empty.
    let count_fill = |png_bytes: &[u8]| -> usize {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf[..info.buffer_size()]
            .chunks(3)
            .filter(|p| p == &[ACC_FILL.0, ACC_FILL.1, ACC_FILL.2])
            .count()
    };
    let full = count_fill(&bytes);
    let all_empty: Vec<usize> = (0..10).collect();
    let none = render_reliability_diagram(&bins(10, &all_empty), &opts, PlotFormat::Png).unwrap();
    let legend_only = count_fill(&none);
    assert!(
        legend_only > 0 && legend_only < 300,
        "legend swatch: {legend_only}"
    );
    assert!(full > legend_only + 2000, "bars: {full} vs {legend_only}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_extension_is_refused_and_writes_nothing() {
    let dir = temp_dir("ext");
    for name in ["diagram.jpg", "diagram", "diagram.svg.txt"] {
        let path = dir.join(name);
        let err = reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &path).unwrap_err();
        assert!(
            matches!(err, MetricsError::Invalid(ref m) if m.contains(".png")),
            "{err}"
        );
        let err = reliability_overlay(&[("a", &bins(5, &[])[..])], &PlotOptions::default(), &path)
            .unwrap_err();
        assert!(matches!(err, MetricsError::Invalid(_)), "{err}");
    }
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_write_leaves_nothing_and_existing_files_are_replaced_whole() {
    let dir = temp_dir("atomic");
    // Folder does not exist: an Output error naming the path.
    let missing = dir.join("no-such-folder").join("d.svg");
    let err = reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &missing).unwrap_err();
    assert!(
        matches!(&err, MetricsError::Output { path, .. } if path == &missing),
        "{err}"
    );
    assert!(entries(&dir).is_empty());

    // The target is a folder: rename fails, the temporary file is cleaned up.
    let blocker = dir.join("taken.svg");
    fs::create_dir(&blocker).unwrap();
    let err = reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &blocker).unwrap_err();
    assert!(matches!(err, MetricsError::Output { .. }), "{err}");
    assert_eq!(entries(&dir), vec!["taken.svg".to_owned()]);

    // Overwriting an existing file replaces it with a complete figure.
    let path = dir.join("d.svg");
    fs::write(&path, "old").unwrap();
    reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &path).unwrap();
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        entries(&dir),
        vec!["d.svg".to_owned(), "taken.svg".to_owned()]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn overlay_draws_each_series_with_a_legend() {
    let a = bins(10, &[0]);
    let mut b = bins(10, &[0, 1, 2]);
    for bin in b.iter_mut().filter(|x| x.count > 0) {
        bin.accuracy = bin.confidence; // calibrated
    }
    let series = [("Cross-entropy", &a[..]), ("CALSeg", &b[..])];
    let opts = PlotOptions {
        title: "Overlay".into(),
        ..PlotOptions::default()
    };
    let svg =
        String::from_utf8(render_reliability_overlay(&series, &opts, PlotFormat::Svg).unwrap())
            .unwrap();
    assert!(svg.contains("Cross-entropy") && svg.contains("CALSeg") && svg.contains("Overlay"));
    // Markers: one filled circle per non-empty bin, plus one in each legend entry.
    for (i, (_, bins)) in series.iter().enumerate() {
        let [r, g, b] = TABLEAU10[i];
        let needle = format!("fill=\"#{r:02X}{g:02X}{b:02X}\"");
        let circles = svg
            .lines()
            .filter(|l| l.contains("<circle") && l.contains(&needle))
            .count();
        let non_empty = bins.iter().filter(|x| x.count > 0).count();
        assert_eq!(circles, non_empty + 1, "series {i}");
    }
    let dir = temp_dir("overlay");
    let path = dir.join("overlay.png");
    reliability_overlay(&series, &opts, &path).unwrap();
    assert_eq!(&fs::read(&path).unwrap()[..4], b"\x89PNG");
    fs::remove_dir_all(&dir).unwrap();

    assert!(matches!(
        render_reliability_overlay(&[], &opts, PlotFormat::Svg),
        Err(MetricsError::Invalid(_))
    ));
}

#[test]
fn invalid_bins_and_sizes_are_refused() {
    let mut b = bins(4, &[]);
    b[2].accuracy = f64::NAN;
    let err = render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Svg).unwrap_err();
    assert!(
        matches!(err, MetricsError::Invalid(ref m) if m.contains("bin 2")),
        "{err}"
    );
    let mut b = bins(4, &[]);
    b[1].confidence = 1.5;
    assert!(render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Png).is_err());
    let mut b = bins(4, &[]);
    b[3].lower = 0.9;
    b[3].upper = 0.8;
    assert!(render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Svg).is_err());
    // An empty bin's NaNs are fine.
    assert!(
        render_reliability_diagram(&bins(4, &[1]), &PlotOptions::default(), PlotFormat::Svg)
            .is_ok()
    );
    let tiny = PlotOptions {
        width: 50,
        ..PlotOptions::default()
    };
    assert!(matches!(
        render_reliability_diagram(&bins(4, &[]), &tiny, PlotFormat::Png),
        Err(MetricsError::Invalid(_))
    ));
    assert_eq!(
        PlotFormat::from_path(Path::new("a/b.SvG")).unwrap(),
        PlotFormat::Svg
    );
}

fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn panel_png_has_the_expected_size_tiles_and_titles() {
    let (rows, cols) = (20, 32);
    let image = Array2::from_shape_fn((rows, cols), |(r, c)| (r + c) as f32);
    let label = Array2::from_shape_fn((rows, cols), |(_, c)| (c / 11) as u32);
    let conf = Array2::from_elem((rows, cols), 1.0f32);
    let soft = Array3::from_elem((1, rows, cols), 0.0f32);
    let dir = temp_dir("panel");
    let path = dir.join("panel.png");
    let confidences = [("CALSeg".to_owned(), conf.view())];
    Panel {
        image: image.view(),
        label: label.view(),
        soft_label: Some(soft.index_axis(ndarray::Axis(0), 0)),
        confidences: &confidences,
    }
    .write_png(&path)
    .unwrap();
    let (w, h, px) = decode(&std::fs::read(&path).unwrap());
    // Scale 256 / 32 = 8: tiles 256 × 160; 4 columns of 256 + margins.
    let layout = panel_layout((rows, cols), 4).unwrap();
    assert_eq!(layout.scale, 8);
    assert_eq!((w, h), (layout.width, layout.height));
    assert_eq!((w, h), (8 + 4 * (256 + 8), 8 + 24 + 160 + 24 + 8));
    let at = |x: u32, y: u32| {
        let i = ((y * w + x) * 3) as usize;
        [px[i], px[i + 1], px[i + 2]]
    };
    let top = 8 + 24;
    // Label tile (column 1): background black at the left, class 1 right of it.
    let col1 = 8 + 264;
    assert_eq!(at(col1 + 4, top + 4), [0, 0, 0]);
    assert_eq!(at(col1 + 12 * 8, top + 4), LABEL_COLORS[0]);
    // Soft label 0 → viridis(0), confidence 1 → viridis(1).
    assert_eq!(at(8 + 2 * 264 + 10, top + 10), viridis(0.0));
    assert_eq!(at(8 + 3 * 264 + 10, top + 10), viridis(1.0));
    // Image: darkest top-left, brightest bottom-right.
    assert_eq!(at(9, top + 1), [0, 0, 0]);
    assert_eq!(at(8 + 255, top + 159), [255, 255, 255]);
    // Titles: dark text pixels in every title band.
    for t in 0..4 {
        let x0 = 8 + t * 264;
        let dark = (x0..x0 + 256)
            .flat_map(|x| (8..8 + 24).map(move |y| (x, y)))
            .filter(|&(x, y)| at(x, y)[0] < 100)
            .count();
        assert!(dark > 20, "title {t}: {dark} dark pixels");
    }
    // Mismatched shapes are refused and nothing is written.
    let small = Array2::<f32>::zeros((3, 3));
    let bad = dir.join("bad.png");
    let e = Panel {
        image: image.view(),
        label: label.view(),
        soft_label: Some(small.view()),
        confidences: &[],
    }
    .write_png(&bad)
    .unwrap_err();
    assert!(e.to_string().contains("soft label"), "{e}");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn viridis_endpoints_and_label_colours() {
    assert_eq!(viridis(0.0), [68, 1, 84]);
    assert_eq!(viridis(1.0), [253, 231, 37]);
    assert_eq!(viridis(2.0), viridis(1.0));
    assert_eq!(viridis(0.5), [38, 130, 142]);
    assert_eq!(viridis(f32::NAN), [128, 128, 128]);
    assert_eq!(label_color(0), [0, 0, 0]);
    assert_eq!(label_color(11), label_color(1));
}

//! Progress bars on standard error; indicatif hides them when it is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A counter for work of unknown size: `what` done so far, the rate and the time taken.
pub fn counter(what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{human_pos}} {what} ({{per_sec}}, {{elapsed}})"
    ))
    .expect("valid template");
    ProgressBar::new_spinner().with_style(style)
}

/// A spinner for a step whose size is not known: what it is doing and the time taken.
pub fn spinner(doing: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{{spinner}} {doing} ({{elapsed}})"))
        .expect("valid template")
}

/// A bar for `total` items: done so far, the rate and the time left.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    ProgressBar::new(total).with_style(bar_style(what))
}

/// The style of [`bar`], for a bar that moves on to another step.
pub fn bar_style(what: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{bar:30}} {{human_pos}}/{{human_len}} {what} ({{per_sec}}, ETA {{eta}})"
    ))
    .expect("valid template")
}

/// Prints a line above `bar`, or plainly when the bar is hidden (not a terminal), where
/// indicatif's own `println` would drop it.
pub fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

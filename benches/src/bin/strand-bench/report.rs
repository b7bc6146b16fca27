//! Where results and progress go. Text results go to stdout, or to stderr with `--json`, whose
//! single result object is then all that stdout carries. Progress bars draw on stderr, only on a
//! terminal (indicatif hides them otherwise) and never with `--quiet`.

use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, Default)]
struct Output {
    json: bool,
    quiet: bool,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

fn output() -> Output {
    OUTPUT.get().copied().unwrap_or_default()
}

/// Set once, before anything is written.
pub fn init(json: bool, quiet: bool) {
    let _ = OUTPUT.set(Output { json, quiet });
}

/// Writes one line of the human-readable results.
pub fn say_line(line: std::fmt::Arguments<'_>) {
    if output().json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// `println!` for results: see [`say_line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::report::say_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Prints the result object on stdout when `--json` asked for it.
pub fn finish(result: &serde_json::Value) -> anyhow::Result<()> {
    if output().json {
        println!("{}", serde_json::to_string(result)?);
    }
    Ok(())
}

/// A bar counting `len` items of `what`.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if output().quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::default_bar()
            .template(&format!(
                "{what:>8} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
            ))
            .expect("valid template"),
    );
    bar
}

/// A spinner for a phase whose length is not known (waiting, setting up).
pub fn spinner(what: &str) -> ProgressBar {
    if output().quiet {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::default_spinner()
            .template(&format!("{what:>8} {{spinner}} {{elapsed}} {{msg}}"))
            .expect("valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
}

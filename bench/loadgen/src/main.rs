//! `loadgen`: the small load tools behind `bench/run.sh`.
//!
//! * `loadgen --url URL --rate N --duration-s S [--connections 64] ...` runs an
//!   open-loop, fixed-rate HTTP/1.1 load and prints one JSON line of results.
//! * `loadgen ready-time --url URL -- CMD [ARGS...]` spawns `CMD`, polls `URL`
//!   until it answers 200 and prints the time from spawn to ready as JSON.
//!
//! Results go to stdout (one JSON line), diagnostics to stderr.
#![allow(clippy::print_stdout)]

mod args;
mod load;
mod ready;
mod target;
mod wire;

use std::process::ExitCode;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage:
  loadgen --url URL --rate REQ_PER_S [--duration-s 10] [--warmup-s 0] [--authorization VALUE]
          [--connections 64] [--threads 1] [--timeout-ms 5000]
          [--body-file PATH [--content-type application/json]]
      Open-loop fixed-rate HTTP/1.1 GETs (POSTs of the file's bytes with
      --body-file; the whole response body is read) over keep-alive connections. Each request
      has a scheduled send time (start + i/rate); latency is measured from that
      scheduled time, so a slow server cannot hide its queueing delay
      (coordinated-omission safe). Requests scheduled during --warmup-s are sent
      but not recorded. Prints one JSON line:
      {\"rate\":..,\"sent\":..,\"ok\":..,\"errors\":..,\"p50_us\":..,\"p99_us\":..,\"p999_us\":..,\"max_us\":..,...}

  loadgen ready-time --url URL [--timeout-ms 10000] [--interval-us 500] -- CMD [ARGS...]
      Spawns CMD (inheriting the environment), polls URL with a raw HTTP/1.1 GET
      every --interval-us until it answers 200, then stops CMD (SIGTERM, then
      SIGKILL after 5 s). Prints {\"ready_ms\":..,\"attempts\":..}.
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(argv) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(argv: Vec<String>) -> Result<String, BoxError> {
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        eprint!("{USAGE}");
        return Err("help requested".into());
    }
    let (mode, rest) = match argv.first().map(String::as_str) {
        Some("ready-time") => ("ready-time", &argv[1..]),
        Some("load") => ("load", &argv[1..]),
        _ => ("load", &argv[..]),
    };
    let mut parsed = args::Args::parse(rest)?;
    match mode {
        "ready-time" => {
            let cfg = ready::ReadyConfig {
                url: parsed.required("url")?,
                timeout: Duration::from_millis(parsed.get_or("timeout-ms", 10_000u64)?),
                interval: Duration::from_micros(parsed.get_or("interval-us", 500u64)?),
                command: std::mem::take(&mut parsed.rest),
            };
            parsed.finish()?;
            ready::run(&cfg)
        }
        _ => {
            let rate: f64 = parsed.required("rate")?;
            let duration_s: f64 = parsed.get_or("duration-s", 10.0)?;
            let warmup_s: f64 = parsed.get_or("warmup-s", 0.0)?;
            let cfg = load::LoadConfig {
                url: parsed.required("url")?,
                rate,
                duration: positive_secs("duration-s", duration_s)?,
                warmup: non_negative_secs("warmup-s", warmup_s)?,
                connections: parsed.get_or("connections", 64usize)?,
                threads: parsed.get_or("threads", 1usize)?,
                timeout: Duration::from_millis(parsed.get_or("timeout-ms", 5_000u64)?),
                authorization: match parsed.get_or("authorization", String::new())? {
                    value if value.is_empty() => None,
                    value => Some(value),
                },
                body: match parsed.get_or("body-file", String::new())? {
                    path if path.is_empty() => None,
                    path => Some(bytes::Bytes::from(
                        std::fs::read(&path).map_err(|e| format!("--body-file {path}: {e}"))?,
                    )),
                },
                content_type: parsed.get_or("content-type", "application/json".to_owned())?,
            };
            parsed.finish()?;
            if !parsed.rest.is_empty() {
                return Err(format!("unexpected arguments: {:?}", parsed.rest).into());
            }
            load::run(&cfg)
        }
    }
}

fn positive_secs(name: &str, secs: f64) -> Result<Duration, BoxError> {
    if secs.is_finite() && secs > 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("--{name} must be a positive number of seconds").into())
    }
}

fn non_negative_secs(name: &str, secs: f64) -> Result<Duration, BoxError> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("--{name} must be a non-negative number of seconds").into())
    }
}

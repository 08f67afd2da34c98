//! Start-up-to-ready timing: spawn a server, poll a URL until it answers 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Uri;

use crate::BoxError;
use crate::target::Target;

pub struct ReadyConfig {
    pub url: Uri,
    pub timeout: Duration,
    pub interval: Duration,
    pub command: Vec<String>,
}

pub fn run(cfg: &ReadyConfig) -> Result<String, BoxError> {
    let (program, args) = cfg
        .command
        .split_first()
        .ok_or("ready-time needs a command after `--`")?;
    let target = Target::from_uri(&cfg.url)?;
    let addr = target
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{}: no address", target.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path, target.host_header
    );
    // The child's stdout goes to our stderr: our stdout carries only the result.
    let child_stdout = Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?);

    let spawned_at = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(child_stdout)
        .spawn()
        .map_err(|e| format!("spawning {program}: {e}"))?;
    let mut attempts: u64 = 0;
    let outcome = loop {
        attempts += 1;
        if probe(&addr, request.as_bytes()) {
            break Ok(spawned_at.elapsed());
        }
        match child.try_wait() {
            Ok(Some(status)) => break Err(format!("{program} exited ({status}) before ready")),
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for {program}: {e}")),
        }
        if spawned_at.elapsed() > cfg.timeout {
            break Err(format!(
                "{} did not answer 200 within {} ms",
                cfg.url,
                cfg.timeout.as_millis()
            ));
        }
        std::thread::sleep(cfg.interval);
    };
    stop(&mut child);
    let ready = outcome?;
    Ok(format!(
        "{{\"ready_ms\":{:.3},\"attempts\":{attempts}}}",
        ready.as_secs_f64() * 1000.0
    ))
}

/// One raw `GET`; true if the status line says 200.
fn probe(addr: &SocketAddr, request: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream.write_all(request).is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
    }
    buf.starts_with(b"HTTP/1.") && &buf[8..12] == b" 200"
}

/// SIGTERM (so servers such as nginx take their workers down), then SIGKILL.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

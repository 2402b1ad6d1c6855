//! `qmp SOCKET STEP...`: a small QMP client for the end-to-end tests. It connects to QEMU's
//! QMP UNIX socket, negotiates capabilities, then runs each step in turn on one connection:
//!
//! ```text
//! COMMAND[=JSON_ARGUMENTS]    execute COMMAND (e.g. device_del='{"id":"t1"}'); print its
//!                             "return" value as one JSON line; an "error" reply fails
//! wait:EVENT[:DEVICE_ID]      wait for EVENT (for that device id), print it
//! ```
//!
//! Every wait (a reply, an event) gives up after `QMP_TIMEOUT` seconds (default 30) with exit
//! status 1. Events that arrive while a command waits for its reply are kept for a later
//! `wait:` step. Exit status 0 when every step succeeded.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
    timeout: Duration,
}

impl Qmp {
    fn connect(path: &str, timeout: Duration) -> Result<Self, String> {
        let writer = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| e.to_string())?);
        let mut qmp = Qmp {
            reader,
            writer,
            events: VecDeque::new(),
            timeout,
        };
        let greeting = qmp.next_message(Instant::now() + timeout)?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The next message, before `deadline`.
    fn next_message(&mut self, deadline: Instant) -> Result<Value, String> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or("timed out")?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QEMU closed the QMP connection".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad QMP line {line}: {e}")),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }

    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self.next_message(deadline)?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(format!("{command}: {e}"));
            }
            if m.get("event").is_some() {
                self.events.push_back(m);
            }
        }
    }

    fn wait_event(&mut self, name: &str, device: Option<&str>) -> Result<Value, String> {
        let matches = |m: &Value| {
            m.get("event").and_then(Value::as_str) == Some(name)
                && device.is_none_or(|d| m["data"]["device"].as_str() == Some(d))
        };
        if let Some(pos) = self.events.iter().position(matches) {
            return Ok(self.events.remove(pos).unwrap_or_default());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self
                .next_message(deadline)
                .map_err(|e| format!("waiting for {name}: {e}"))?;
            if matches(&m) {
                return Ok(m);
            }
            if m.get("event").is_some() {
                self.events.push_back(m);
            }
        }
    }
}

fn step(qmp: &mut Qmp, step: &str) -> Result<Value, String> {
    if let Some(rest) = step.strip_prefix("wait:") {
        let (name, device) = match rest.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        return qmp.wait_event(name, device);
    }
    let (command, arguments) = match step.split_once('=') {
        Some((c, a)) => {
            let a: Value =
                serde_json::from_str(a).map_err(|e| format!("{c}: bad arguments {a}: {e}"))?;
            (c, Some(a))
        }
        None => (step, None),
    };
    qmp.execute(command, arguments)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, steps)) = args.split_first() else {
        eprintln!("usage: qmp SOCKET COMMAND[=JSON] | wait:EVENT[:DEVICE] ...");
        return ExitCode::from(2);
    };
    let secs = std::env::var("QMP_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let run = || -> Result<(), String> {
        let mut qmp = Qmp::connect(path, Duration::from_secs(secs))?;
        for s in steps {
            println!("{}", step(&mut qmp, s)?);
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qmp: {e}");
            ExitCode::FAILURE
        }
    }
}

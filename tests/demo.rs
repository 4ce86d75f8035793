//! `pgsplit demo` end to end: it prints a DATABASE_URL that works, and on
//! SIGTERM it stops the servers, removes the cluster and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the demo if the test fails before it stops on its own.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_serves_and_cleans_up_on_sigterm() {
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .arg("demo")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pgsplit demo"),
    );
    let child = &mut demo.0;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut url = None;
    let mut leader_port = None;
    let mut replica_ports = Vec::new();
    while url.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            if let Some(u) = line.strip_prefix("DATABASE_URL=") {
                url = Some(u.to_string());
            }
            if let Some(addr) = line.strip_prefix("replica  ") {
                replica_ports.extend(
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok()),
                );
            }
            if let Some(addr) = line.strip_prefix("leader   ") {
                leader_port = addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok());
            }
        }
    }
    let url = url.expect("demo printed a DATABASE_URL");
    let leader_port = leader_port.expect("demo printed the leader");
    let port_of = |sql: &str| {
        let out = Command::new("psql")
            .args([&url, "-Atc", sql])
            .output()
            .expect("run psql");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u16>()
            .ok()
    };
    assert_eq!(replica_ports.len(), 2, "demo printed two replicas");
    assert_eq!(
        port_of("/* pgsplit:leader */ SELECT inet_server_port()"),
        Some(leader_port)
    );
    // Reads reach a replica once the probes have seen them healthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut read_port = None;
    while Instant::now() < deadline {
        read_port = port_of("SELECT inet_server_port()");
        if read_port.is_some_and(|p| replica_ports.contains(&p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        read_port.is_some_and(|p| replica_ports.contains(&p)),
        "a read went to {read_port:?}, not a replica {replica_ports:?}"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.is_none() && Instant::now() < deadline {
        status = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.expect("demo exits after SIGTERM");
    assert!(status.success(), "{status}");
    let lines: Vec<String> = rx.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cluster stopped and removed")),
        "{lines:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", leader_port)).is_err(),
        "leader stopped"
    );
}

//! Starting real `cairn` processes on loopback for integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `cairn` process with its own data directory and ports.
pub struct Node {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub log: PathBuf,
    /// Flags beyond the ones every test node gets.
    pub extra_args: Vec<String>,
    /// Environment variables for the process (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// A program and its arguments the server runs under (e.g. `strace … --`); empty for none.
    pub wrapper: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn args(&self) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args: Vec<String> = vec![
            "--name".into(),
            "n1".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            self.endpoint(),
            "--advertise-client-urls".into(),
            self.endpoint(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("n1={peer}"),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts a fresh node in a new temporary directory and waits until it serves.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a fresh node with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Node {
        Node::start_full(&[], &[], env)
    }

    /// Starts a fresh node with extra flags.
    pub fn start_with(extra_args: &[&str]) -> Node {
        Node::start_full(&[], extra_args, &[])
    }

    /// Starts a fresh node with extra flags, run by `wrapper` (its last argument is followed
    /// by the server's path and flags).
    pub fn start_under(wrapper: &[String], extra_args: &[&str]) -> Node {
        Node::start_full(wrapper, extra_args, &[])
    }

    fn start_full(wrapper: &[String], extra_args: &[&str], env: &[(&str, &str)]) -> Node {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut node = Node {
            child: None,
            data_dir: tmp.path().join("data"),
            client_port: free_port(),
            peer_port: free_port(),
            log: tmp.path().join("cairn.log"),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            wrapper: wrapper.to_vec(),
            _tmp: Some(tmp),
        };
        node.launch();
        node
    }

    /// (Re)starts the process on the same data directory and ports.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_cairn"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_cairn")),
        };
        let mut child = command
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = log;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains("ready to serve client requests") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("cairn did not become ready; log:\n{log}");
        }
    }

    pub fn kill9(&mut self) {
        // Under a wrapper, the server goes first: killing only a tracer (strace) would leave
        // the server running, detached. The wrapper then ends by itself once its child is
        // gone, having written all it has (a trace); it is killed only if it does not.
        if let (Some(pid), false) = (self.server_pid(), self.wrapper.is_empty()) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            if let Some(child) = self.child.as_mut() {
                for _ in 0..200 {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id: the child's, or under a wrapper the wrapper's (first) child.
    pub fn server_pid(&self) -> Option<u32> {
        let pid = self.child.as_ref()?.id();
        if self.wrapper.is_empty() {
            return Some(pid);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        // The server, not its wrapper: it exits, and then the wrapper does.
        let pid = self.server_pid();
        if let Some(mut child) = self.child.take() {
            let pid = pid.unwrap_or(child.id());
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect to cairn")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The gRPC status of a failed etcd-client call.
pub fn status_of(err: etcd_client::Error) -> (tonic::Code, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

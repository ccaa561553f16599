//! Several members in one process over one shared engine, each on its own tokio runtime and its
//! own loopback port: how tests (here and in `conformance/`) run a brain cluster without a
//! TiKV. Killing a member shuts its runtime down, so everything it ran stops at once, open
//! connections included, as with `kill -9`.

use crate::brain::Role;
use crate::config::Config;
use crate::member::Member;
use backend::engine::AnyEngine;
use clap::Parser;
use std::time::Duration;

/// One member and the runtime it runs on.
pub struct LocalMember {
    pub name: String,
    /// The member's client URL.
    pub url: String,
    member: Option<Member>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LocalMember {
    /// Starts member `name` on a free loopback port with `extra` flags (etcd-style, e.g.
    /// `["--election-lease", "1s"]`). Callable from inside or outside a tokio runtime.
    pub fn start(
        name: &str,
        engine: &AnyEngine,
        extra: &[&str],
    ) -> Result<Self, crate::error::BoxError> {
        let mut args = vec![
            "engram",
            "--name",
            name,
            "--listen-client-urls",
            "http://127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args)?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1);
        let runtime = crate::runtime(builder)?;
        let engine = engine.clone();
        // Started on a thread of its own: `block_on` may not run inside another runtime.
        let member = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(Member::start(config, engine)))
                .join()
                .map_err(|_| crate::error::BoxError::from("starting the member panicked"))
        })??;
        Ok(LocalMember {
            name: name.to_string(),
            url: member.client_urls[0].clone(),
            member: Some(member),
            runtime: Some(runtime),
        })
    }

    pub fn is_running(&self) -> bool {
        self.member.is_some()
    }

    /// The running member (panics after [`LocalMember::kill`]).
    pub fn member(&self) -> &Member {
        self.member.as_ref().expect("the member was killed")
    }

    pub fn member_mut(&mut self) -> &mut Member {
        self.member.as_mut().expect("the member was killed")
    }

    pub fn member_id(&self) -> u64 {
        self.member().brain.member_id()
    }

    pub fn is_leader(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|m| matches!(m.brain.role(), Role::Leader { .. }))
    }

    /// Waits up to `timeout` for the member to stop serving as `engram` would exit (a
    /// listener failed, or its storage engine must be opened afresh); returns why, or `None`
    /// if it still serves. The member keeps running either way: in this process nothing
    /// exits.
    pub async fn serving_ends(&mut self, timeout: Duration) -> Option<String> {
        let mut member = self.member.take()?;
        let runtime = self.runtime.as_ref()?;
        let ended = runtime.spawn(async move {
            let ended = tokio::time::timeout(timeout, member.serving()).await;
            (member, ended)
        });
        let (member, ended) = ended.await.ok()?;
        self.member = Some(member);
        match ended {
            Ok(Err(reason)) => Some(reason.to_string()),
            _ => None,
        }
    }

    /// Stops the member as SIGTERM does: a leader hands the lead over first.
    pub async fn shutdown(&mut self) {
        if let (Some(member), Some(runtime)) = (self.member.take(), self.runtime.as_ref()) {
            let _ = runtime.spawn(member.shutdown()).await;
        }
        self.kill();
    }

    /// Stops the member as `kill -9` would.
    pub fn kill(&mut self) {
        self.member = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        self.member = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Members `name-0`, `name-1`, ... over one engine.
pub struct LocalCluster {
    pub members: Vec<LocalMember>,
}

impl LocalCluster {
    pub fn start(
        n: usize,
        engine: &AnyEngine,
        extra: &[&str],
    ) -> Result<Self, crate::error::BoxError> {
        let members = (0..n)
            .map(|i| LocalMember::start(&format!("brain-{i}"), engine, extra))
            .collect::<Result<_, _>>()?;
        Ok(LocalCluster { members })
    }

    /// The index of the leader once exactly one running member leads and every running member
    /// agrees on it; None if that does not happen within `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let leaders: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].is_leader())
                .collect();
            if let [leader] = leaders[..] {
                let id = self.members[leader].member_id();
                let agreed = self
                    .members
                    .iter()
                    .filter(|m| m.is_running())
                    .all(|m| m.member().brain.leader().map(|(l, _)| l) == Some(id));
                if agreed {
                    return Some(leader);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The running members that do not lead.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| i != leader && self.members[i].is_running())
            .collect()
    }
}

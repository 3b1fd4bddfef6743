//! The gRPC `Agent` service: thin handlers that check the request and hand it to the engine.
//!
//! Errors: a request refused before anything changed (bad input, lock held by another restore,
//! wrong state) fails the RPC with a gRPC status. Once a step has started acting, its failure is
//! the stream's outcome with `ok = false` (and its error code), recorded as `failed`.

use std::sync::Arc;

use quorate_proto::model::{RemoveLeftovers, RestoreId, Step, StepRequest};
use quorate_proto::pb::{self, agent_server::AgentServer, step_event::Event};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::field::display;

use crate::child::Runner;
use crate::config::{AgentConfig, Definition};
use crate::engine::{Controller, Engine, Outcome, Prepared};
use crate::error::AgentError;
use crate::health::HealthConfig;
use crate::journal::{Op, StateDir};
use crate::runtime::{Component, Runtime, StaticPod, Systemd};
use crate::steps::CONTROLLERS;
use crate::tool::CliTool;
use crate::{describe, gc, health, peers, snapshot};

type EventStream = ReceiverStream<Result<pb::StepEvent, Status>>;

/// The agent's gRPC service.
#[derive(Clone)]
pub struct AgentService {
    engine: Arc<Engine>,
    /// How health and readiness are probed.
    health: Arc<HealthConfig>,
    /// One step at a time on this member.
    step_lock: Arc<Mutex<()>>,
    /// One snapshot transfer at a time.
    push_lock: Arc<Mutex<()>>,
}

/// The runtime a config section describes.
fn runtime_of(
    definition: Definition,
    component: Component,
    (stop_timeout, start_timeout): (std::time::Duration, std::time::Duration),
    runner: &Runner,
) -> Box<dyn Runtime> {
    match definition {
        Definition::StaticPod { manifest } => Box::new(StaticPod {
            component,
            manifest,
            stop_timeout,
            start_timeout,
        }),
        Definition::Systemd {
            unit,
            units,
            systemctl,
        } => Box::new(Systemd::new(
            component,
            unit,
            units,
            systemctl,
            stop_timeout,
            start_timeout,
            runner.clone(),
        )),
    }
}

/// kube-controller-manager and kube-scheduler, run the way the kube-apiserver is: static pods
/// whose manifests sit beside its manifest (as kubeadm writes them), or systemd units
/// `kube-controller-manager.service` / `kube-scheduler.service` found the way its unit is. Each
/// is acted on only where it is present (see [`Runtime::present`]).
fn controller_definitions(apiserver: &Definition) -> Vec<(String, Definition)> {
    CONTROLLERS
        .iter()
        .filter_map(|name| {
            let definition = match apiserver {
                Definition::StaticPod { manifest } => Definition::StaticPod {
                    manifest: manifest.parent()?.join(format!("{name}.yaml")),
                },
                Definition::Systemd {
                    units, systemctl, ..
                } => Definition::Systemd {
                    unit: format!("{name}.service"),
                    units: units.clone(),
                    systemctl: systemctl.clone(),
                },
            };
            Some(((*name).to_owned(), definition))
        })
        .collect()
}

/// The real runtimes and tools for `config`.
pub fn engine_from_config(config: &AgentConfig) -> Engine {
    let host_name = config.host_name.clone().unwrap_or_else(describe::hostname);
    let runner = Runner::new(config.limits, host_name.clone());
    let etcd = config.etcd.as_ref().map(|e| {
        runtime_of(
            e.definition(),
            Component::Etcd,
            (e.stop_timeout, e.start_timeout),
            &runner,
        )
    });
    let apiserver = config.apiserver.as_ref().map(|a| {
        runtime_of(
            a.definition(),
            Component::Apiserver { readyz: a.readyz() },
            (a.stop_timeout, a.start_timeout),
            &runner,
        )
    });
    let controllers = config.apiserver.as_ref().map_or_else(Vec::new, |a| {
        controller_definitions(&a.definition())
            .into_iter()
            .map(|(name, definition)| Controller {
                runtime: runtime_of(
                    definition,
                    Component::Controller { name: name.clone() },
                    (a.stop_timeout, a.start_timeout),
                    &runner,
                ),
                name,
            })
            .collect()
    });
    let e = config.etcd.as_ref();
    Engine {
        state: StateDir::new(&config.state_dir),
        data_dir: e.and_then(|e| e.data_dir.clone()),
        etcd,
        apiserver,
        controllers,
        tool: Box::new(CliTool {
            etcdutl: e.and_then(|e| e.etcdutl.clone()),
            etcdctl: e.and_then(|e| e.etcdctl.clone()),
            runner: runner.clone(),
        }),
        runner,
        host_name,
        trust: crate::signing::Trust::new(config.trusted_keys.clone()),
    }
}

fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("agent task failed: {e}"))
}

fn event(e: Event) -> Result<pb::StepEvent, Status> {
    Ok(pb::StepEvent { event: Some(e) })
}

fn outcome_event(o: Outcome) -> Result<pb::StepEvent, Status> {
    event(Event::Outcome(o.into()))
}

impl AgentService {
    /// A service probing health with the default settings (no credentials configured).
    pub fn new(engine: Engine) -> Self {
        Self::with_health(engine, HealthConfig::default())
    }

    pub fn with_health(engine: Engine, health: HealthConfig) -> Self {
        Self {
            engine: Arc::new(engine),
            health: Arc::new(health),
            step_lock: Arc::new(Mutex::new(())),
            push_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn from_config(config: &AgentConfig) -> Self {
        Self::with_health(engine_from_config(config), config.health())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The tonic service to add to a `Server`.
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self)
    }

    fn checked(request: pb::StepRequest) -> Result<StepRequest, Status> {
        let req = StepRequest::try_from(request)?;
        let span = tracing::Span::current();
        span.record("restore_id", display(req.restore_id));
        span.record("member", req.facts.member_name.as_str());
        span.record("step", req.step.name());
        Ok(req)
    }

    async fn do_step(&self, req: StepRequest, op: Op) -> Result<EventStream, Status> {
        let guard = Arc::clone(&self.step_lock).lock_owned().await;
        let span = tracing::Span::current();
        let (engine, r, s) = (Arc::clone(&self.engine), req.clone(), span.clone());
        let prepared = tokio::task::spawn_blocking(move || s.in_scope(|| engine.prepare(&r, op)))
            .await
            .map_err(join_error)?
            .inspect_err(|e| tracing::info!("refused: {e}"))?;
        let (tx, rx) = mpsc::channel(64);
        match prepared {
            Prepared::Answer(outcome) => {
                let _client_gone = tx.send(outcome_event(outcome)).await;
            }
            Prepared::Act(plan) => {
                if plan.req.step == Step::Halt && op == Op::Run && !self.engine.apiserver_only() {
                    // Before anything is journaled: waiting changes nothing on this member.
                    let waited = peers::wait_until_leader_alone(
                        Arc::clone(&self.engine),
                        Arc::clone(&self.health),
                        peers::LEADER_WAIT,
                        |m: String| {
                            tracing::info!("{m}");
                            let _client_gone =
                                tx.try_send(event(Event::Progress(pb::Progress { message: m })));
                        },
                    )
                    .await;
                    match waited {
                        Ok(Some(note)) => tracing::info!("{note}"),
                        Ok(None) => {}
                        // Not knowing is not a reason to keep etcd up: HALT goes on.
                        Err(e) => tracing::info!("cannot tell whether etcd leads peers: {e}"),
                    }
                }
                let engine = Arc::clone(&self.engine);
                // The step finishes (and is journaled) even if the client goes away.
                tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    span.in_scope(|| {
                        let progress = |m: String| {
                            let _client_gone = tx
                                .blocking_send(event(Event::Progress(pb::Progress { message: m })));
                        };
                        let outcome = engine.perform(*plan, &progress);
                        tracing::info!(ok = outcome.ok, "{}", outcome.message);
                        let _client_gone = tx.blocking_send(outcome_event(outcome));
                    });
                });
            }
        }
        Ok(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    #[tracing::instrument(skip_all, fields(restore_id, member, step))]
    async fn describe(
        &self,
        _request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        let (engine, health) = (Arc::clone(&self.engine), Arc::clone(&self.health));
        let response =
            tokio::task::spawn_blocking(move || describe::describe_with(&engine, &health))
                .await
                .map_err(join_error)??;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(restore_id, member, step = "health"))]
    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let health = health::member_health(Arc::clone(&self.engine), Arc::clone(&self.health))
            .await
            .inspect_err(|e| tracing::info!("cannot probe health: {e}"))?;
        tracing::debug!(state = ?health.state(), "{}", health.summary());
        Ok(Response::new(health.into()))
    }

    #[tracing::instrument(skip_all, fields(restore_id, member, step = "push-snapshot"))]
    async fn push_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReceipt>, Status> {
        if self.engine.apiserver_only() {
            return Err(AgentError::InvalidRequest(format!(
                "{} is an apiserver-only host: snapshots are staged on etcd members only; list it \
                 as an [[apiserver]] host, not a [[member]], in the inventory",
                self.engine.host_name
            ))
            .into());
        }
        let Ok(_guard) = self.push_lock.try_lock() else {
            return Err(AgentError::Aborted(
                "another snapshot transfer to this member is in progress; wait for it and retry"
                    .into(),
            )
            .into());
        };
        let receipt = snapshot::receive(
            Arc::clone(&self.engine),
            Arc::clone(&self.step_lock),
            request.into_inner(),
        )
        .await
        .inspect_err(|e| tracing::warn!("snapshot refused: {e}"))?;
        Ok(Response::new(receipt))
    }

    type RunStream = EventStream;

    #[tracing::instrument(skip_all, fields(restore_id, member, step))]
    async fn run(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = Self::checked(request.into_inner())?;
        self.do_step(req, Op::Run).await.map(Response::new)
    }

    type RevertStream = EventStream;

    #[tracing::instrument(skip_all, fields(restore_id, member, step))]
    async fn revert(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = Self::checked(request.into_inner())?;
        self.do_step(req, Op::Revert).await.map(Response::new)
    }

    #[tracing::instrument(skip_all, fields(step = "list-leftovers"))]
    async fn list_leftovers(
        &self,
        _request: Request<pb::ListLeftoversRequest>,
    ) -> Result<Response<pb::ListLeftoversResponse>, Status> {
        let engine = Arc::clone(&self.engine);
        let restores = tokio::task::spawn_blocking(move || gc::list(&engine))
            .await
            .map_err(join_error)?
            .inspect_err(|e| tracing::info!("cannot list leftovers: {e}"))?;
        Ok(Response::new(pb::ListLeftoversResponse {
            restores: restores.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(restore_id, step = "remove-leftovers"))]
    async fn remove_leftovers(
        &self,
        request: Request<pb::RemoveLeftoversRequest>,
    ) -> Result<Response<pb::RemoveLeftoversResponse>, Status> {
        let req = RemoveLeftovers::try_from(request.into_inner())?;
        tracing::Span::current().record("restore_id", display(req.restore_id));
        // No step runs while leftovers go: a step's journal is what says what is left.
        let guard = Arc::clone(&self.step_lock).lock_owned().await;
        let engine = Arc::clone(&self.engine);
        let removals = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            gc::remove(&engine, &req)
        })
        .await
        .map_err(join_error)?
        .inspect_err(|e| tracing::info!("refused: {e}"))?;
        Ok(Response::new(pb::RemoveLeftoversResponse { removals }))
    }
}

/// The restore holding this member's lock, for logs at startup.
pub fn active_restore(service: &AgentService) -> Option<RestoreId> {
    service.engine.state.active().ok().flatten()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::UnitSource;

    #[test]
    fn controllers_are_found_the_way_the_apiserver_is() {
        let pod = Definition::StaticPod {
            manifest: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
        };
        assert_eq!(
            controller_definitions(&pod),
            CONTROLLERS.map(|c| (
                c.to_owned(),
                Definition::StaticPod {
                    manifest: PathBuf::from(format!("/etc/kubernetes/manifests/{c}.yaml")),
                }
            ))
        );
        let unit = Definition::Systemd {
            unit: "kube-apiserver.service".into(),
            units: UnitSource::Root("/srv/host1".into()),
            systemctl: "/usr/bin/systemctl".into(),
        };
        assert_eq!(
            controller_definitions(&unit),
            CONTROLLERS.map(|c| (
                c.to_owned(),
                Definition::Systemd {
                    unit: format!("{c}.service"),
                    units: UnitSource::Root("/srv/host1".into()),
                    systemctl: "/usr/bin/systemctl".into(),
                }
            ))
        );
    }
}

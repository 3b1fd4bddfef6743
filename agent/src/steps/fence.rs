//! FENCE and UNFENCE: the kube-apiserver and its controllers (kube-controller-manager,
//! kube-scheduler) stop together, so that none acts on a cache from before the restore, and come
//! back apiserver first: the controllers start only once `/readyz` answers.
//!
//! | | apiserver | controllers (each where present) |
//! |---|---|---|
//! | FENCE, UNFENCE's revert | stopped | stopped at the same time; any that will not stop fails the step |
//! | UNFENCE, FENCE's revert | started, ready | then started together; one that will not start is reported |
//!
//! Every move is journaled before it is made (see [`control`]), so an agent restarted mid-step
//! knows where each manifest is.

use quorate_proto::model::ComponentFailure;

use super::{Ctx, Done, control, control_all, done};
use crate::engine::Controller;
use crate::error::Result;
use crate::journal::Op;
use crate::runtime::Runtime;

/// The control-plane components stopped and started with the kube-apiserver.
pub const CONTROLLERS: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

const APISERVER: &str = "kube-apiserver";

/// The controllers present on this host: a definition at home or set aside by this restore, or
/// a move recorded in the journal (whose error, if the files are gone since, names both paths).
fn present<'e>(ctx: &Ctx<'e>) -> Vec<&'e Controller> {
    let engine = ctx.engine;
    engine
        .controllers
        .iter()
        .filter(|c| {
            let aside = engine
                .state
                .manifest_aside(ctx.req.restore_id, c.runtime.definition());
            ctx.journal.manifests.contains_key(&c.name) || c.runtime.present(&aside)
        })
        .collect()
}

/// Stops the kube-apiserver and each controller present at the same time (nothing orders them:
/// the controllers only talk to the apiserver), and waits until each is down.
pub(super) fn stop(ctx: &mut Ctx<'_>) -> Result<Done> {
    let engine = ctx.engine;
    let Some(apiserver) = engine.apiserver.as_deref() else {
        return Ok(done(
            "no kube-apiserver on this member; nothing to stop".into(),
        ));
    };
    let mut components: Vec<(&str, &dyn Runtime)> = vec![(APISERVER, apiserver)];
    components.extend(
        present(ctx)
            .into_iter()
            .map(|c| (c.name.as_str(), c.runtime.as_ref())),
    );
    let mut messages = Vec::with_capacity(components.len());
    for stopped in control_all(ctx, &components, Op::Run) {
        messages.push(stopped?.message);
    }
    Ok(done(messages.join("; ")))
}

/// Starts the kube-apiserver and waits until `/readyz` answers, then starts the controllers
/// present, together. A controller that will not start does not fail the step (the apiserver serves; the
/// data is restored, or put back on a rollback): the outcome lists it in `not_started`.
pub(super) fn start(ctx: &mut Ctx<'_>) -> Result<Done> {
    let engine = ctx.engine;
    let Some(apiserver) = engine.apiserver.as_deref() else {
        return Ok(done(
            "no kube-apiserver on this member; nothing to start".into(),
        ));
    };
    let mut d = control(ctx, APISERVER, apiserver, Op::Revert)?;
    let controllers = present(ctx);
    let components: Vec<(&str, &dyn Runtime)> = controllers
        .iter()
        .map(|c| (c.name.as_str(), c.runtime.as_ref()))
        .collect();
    let started = control_all(ctx, &components, Op::Revert);
    for (c, started) in controllers.into_iter().zip(started) {
        match started {
            Ok(started) => {
                d.message = format!("{}; {}", d.message, started.message);
                d.details.started.push(c.name.clone());
            }
            Err(e) => {
                tracing::warn!("{} did not start: {e}", c.name);
                let message = format!(
                    "{} did not start ({e}); the kube-apiserver is ready: start {} by hand \
                     (check its log and the kubelet or its unit)",
                    c.name, c.name
                );
                d.message = format!("{}; {message}", d.message);
                d.details.not_started.push(ComponentFailure {
                    component: c.name.clone(),
                    message,
                });
            }
        }
    }
    Ok(d)
}

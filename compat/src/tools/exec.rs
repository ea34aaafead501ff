//! How the tools facade runs: `execute_parallel` as one kernel batch behind the cost-budget
//! admission, `execute_graph` as an event-driven dependency tracker over `Kernel::submit`.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hive_kernel::{
    BatchOptions, Cancellation, Fairness, Status, Target, TaskId, TaskSpec as KernelTask,
};
use serde_json::Value;

use super::graph::{assign_ids, TaskGraph};
use super::result::{Metrics, OrchestrationResult, TaskOutcome};
use super::{CallTable, OrchestrationPolicy, TaskSpec, ToolsError, ToolsOrchestrator};

/// Rounding slack of the budget check, so that 0.1 + 0.2 fits a budget of 0.3.
const BUDGET_EPSILON: f64 = 1e-9;

/// What the budget says about one more task.
struct Budget {
    limit: Option<f64>,
    spent: f64,
}

impl Budget {
    fn new(limit: Option<f64>) -> Self {
        Budget { limit, spent: 0.0 }
    }

    /// Charges `cost` if it fits; otherwise the reason the task does not start.
    fn charge(&mut self, cost: Option<f64>) -> Result<(), String> {
        let c = cost.unwrap_or(0.0);
        if let Some(limit) = self.limit {
            if self.spent + c > limit + BUDGET_EPSILON {
                return Err(format!(
                    "cost budget {limit} would be exceeded (spent {}, this task costs {c})",
                    self.spent
                ));
            }
        }
        self.spent += c;
        Ok(())
    }
}

/// A call's tasks, registered, and their cost estimates.
struct Prepared {
    table: Arc<CallTable>,
    costs: Vec<Option<f64>>,
}

/// The kernel task of job `idx` of `call`.
fn kernel_task(
    target: &Target,
    call: u64,
    idx: usize,
    p: &Prepared,
    policy: &OrchestrationPolicy,
    retry: hive_kernel::RetryPolicy,
) -> KernelTask {
    // Fields set in place: the `with_*` setters move the whole spec each time.
    let mut t = KernelTask::new(target.clone(), Value::from(call << 32 | idx as u64));
    t.timeout = Some(p.table.specs[idx].timeout.unwrap_or(policy.timeout()));
    t.retry = retry;
    t.name = Some(p.table.ids[idx].clone());
    t.cost = p.costs[idx];
    t
}

/// Indices in the order tasks are offered to the budget: input order (`round_robin`: every
/// task has the same target, the pool's role), or lowest cost first (`shortest_first`, stable,
/// tasks without a cost last): the order in which `run_batch` submits them.
fn offer_order(costs: &[Option<f64>], fairness: Fairness) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..costs.len()).collect();
    if fairness == Fairness::ShortestFirst {
        idx.sort_by(|&a, &b| {
            let ca = costs[a].unwrap_or(f64::INFINITY);
            let cb = costs[b].unwrap_or(f64::INFINITY);
            ca.total_cmp(&cb).then(a.cmp(&b))
        });
    }
    idx
}

fn started_cost(tasks: &[TaskOutcome], costs: &[Option<f64>]) -> f64 {
    tasks
        .iter()
        .zip(costs)
        .filter(|(t, _)| t.attempts > 0)
        .filter_map(|(_, c)| *c)
        .sum()
}

pub(crate) async fn parallel(
    o: &ToolsOrchestrator,
    specs: Vec<TaskSpec>,
    policy: &OrchestrationPolicy,
) -> Result<OrchestrationResult, ToolsError> {
    let ids = assign_ids(&specs)?;
    o.ensure_capacity(policy.max_concurrency()).await?;
    let costs: Vec<Option<f64>> = specs.iter().map(TaskSpec::cost_estimate).collect();
    let n = ids.len();

    // The budget is charged in submission order; a task that does not fit never enters the
    // kernel.
    let mut refused: Vec<Option<String>> = Vec::new();
    if policy.cost_budget().is_some() {
        refused = vec![None; n];
        let mut budget = Budget::new(policy.cost_budget());
        for i in offer_order(&costs, policy.fairness()) {
            if let Err(why) = budget.charge(costs[i]) {
                refused[i] = Some(why);
            }
        }
    }
    let admitted = |i: usize| refused.get(i).is_none_or(|r| r.is_none());

    let (call, _guard, table) = o.register(specs, ids)?;
    let p = Prepared { table, costs };
    let retry = policy.retry().to_kernel();
    let target = Target::role(&*o.role);
    let batch: Vec<KernelTask> = (0..n)
        .filter(|&i| admitted(i))
        .map(|i| kernel_task(&target, call, i, &p, policy, retry))
        .collect();
    let opts = BatchOptions::new(policy.max_concurrency())
        .cancellation(policy.cancellation())
        .fairness(policy.fairness());
    let run = format!("{}.{call}", o.role);
    o.kernel.run_started(&run, "execute_parallel");
    let done = o.kernel.run_batch(batch, opts).await;
    let cascaded = policy.cancellation() == Cancellation::Cascading
        && done.results.iter().any(|r| !r.outcome.is_success());
    let mut results = done.results.into_iter();
    let mut tasks = Vec::with_capacity(n);
    for (i, id) in p.table.ids.iter().enumerate() {
        let t = match refused.get_mut(i).and_then(Option::take) {
            Some(why) => TaskOutcome::never_ran(id.clone(), Status::Skipped, why),
            None => match results.next() {
                Some(r) => {
                    let mut t = TaskOutcome::from_kernel(id.clone(), r);
                    if cascaded && t.status == Status::Cancelled {
                        t.errors.push(
                            "cancelled: another task of the run did not succeed (cascading cancellation)"
                                .into(),
                        );
                    }
                    t
                }
                None => TaskOutcome::never_ran(
                    id.clone(),
                    Status::Cancelled,
                    "the kernel returned no result for this task".into(),
                ),
            },
        };
        tasks.push(t);
    }
    let ok = tasks.iter().all(TaskOutcome::succeeded);
    o.kernel.run_finished(
        &run,
        "execute_parallel",
        if ok { "succeeded" } else { "failed" },
    );
    let metrics = Metrics::new(&tasks, done.wall, started_cost(&tasks, &p.costs));
    Ok(OrchestrationResult {
        tasks,
        metrics,
        merged: None,
    })
}

/// A cost as a heap key (lowest first via `Reverse`; no cost sorts last).
#[derive(Clone, Copy, PartialEq)]
struct CostKey(f64);

impl Eq for CostKey {}

impl PartialOrd for CostKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for CostKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.0.total_cmp(&other.0)
    }
}

/// Tasks whose dependencies all succeeded, in the order they start.
enum ReadyQueue {
    /// `round_robin`: the order they became ready (input order among equals).
    Fifo(VecDeque<usize>),
    /// `shortest_first`: lowest cost estimate first, then input order.
    Cheapest(BinaryHeap<Reverse<(CostKey, usize)>>),
}

impl ReadyQueue {
    fn push(&mut self, i: usize, cost: Option<f64>) {
        match self {
            ReadyQueue::Fifo(q) => q.push_back(i),
            ReadyQueue::Cheapest(h) => h.push(Reverse((CostKey(cost.unwrap_or(f64::INFINITY)), i))),
        }
    }

    fn pop(&mut self) -> Option<usize> {
        match self {
            ReadyQueue::Fifo(q) => q.pop_front(),
            ReadyQueue::Cheapest(h) => h.pop().map(|Reverse((_, i))| i),
        }
    }

    fn drain(&mut self) -> Vec<usize> {
        let mut v = Vec::new();
        while let Some(i) = self.pop() {
            v.push(i);
        }
        v
    }
}

pub(crate) async fn graph(
    o: &ToolsOrchestrator,
    graph: TaskGraph,
    policy: &OrchestrationPolicy,
) -> Result<OrchestrationResult, ToolsError> {
    let TaskGraph {
        tasks: specs,
        ids,
        deps,
        dependents,
    } = graph;
    o.ensure_capacity(policy.max_concurrency()).await?;
    let costs: Vec<Option<f64>> = specs.iter().map(TaskSpec::cost_estimate).collect();
    let n = ids.len();
    let (call, _guard, table) = o.register(specs, ids)?;
    let p = Prepared { table, costs };
    let ids = &p.table.ids;
    let retry = policy.retry().to_kernel();
    let target = Target::role(&*o.role);
    let max = policy.max_concurrency();
    let cascading = policy.cancellation() == Cancellation::Cascading;

    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut outcomes: Vec<Option<TaskOutcome>> = (0..n).map(|_| None).collect();
    let mut running_ids: Vec<Option<TaskId>> = vec![None; n];
    let mut ready = match policy.fairness() {
        Fairness::ShortestFirst => ReadyQueue::Cheapest(BinaryHeap::new()),
        Fairness::RoundRobin => ReadyQueue::Fifo(VecDeque::new()),
    };
    for i in (0..n).filter(|&i| waiting[i] == 0) {
        ready.push(i, p.costs[i]);
    }
    let mut budget = Budget::new(policy.cost_budget());
    // Set once a task ended badly under cascading cancellation: why the rest is cancelled.
    let mut abort: Option<String> = None;
    let mut unstarted_cancelled = false;
    let mut running = FuturesUnordered::new();
    let run = format!("{}.{call}", o.role);
    o.kernel.run_started(&run, "execute_graph");
    let t0 = Instant::now();

    loop {
        while running.len() < max && abort.is_none() {
            let Some(i) = ready.pop() else { break };
            if let Err(why) = budget.charge(p.costs[i]) {
                outcomes[i] = Some(TaskOutcome::never_ran(ids[i].clone(), Status::Skipped, why));
                skip_dependents(i, ids, &dependents, &mut outcomes);
                continue;
            }
            match o
                .kernel
                .submit(kernel_task(&target, call, i, &p, policy, retry))
                .await
            {
                Ok(h) => {
                    running_ids[i] = Some(h.id());
                    running.push(async move { (i, h.await) });
                }
                Err(e) => {
                    outcomes[i] = Some(TaskOutcome::never_ran(
                        ids[i].clone(),
                        Status::Failed,
                        format!("could not be submitted: {e}"),
                    ));
                    ended_badly(
                        i,
                        cascading,
                        &mut abort,
                        ids,
                        &dependents,
                        &mut outcomes,
                        &running_ids,
                        o,
                    );
                }
            }
        }
        if abort.is_some() && !unstarted_cancelled {
            // Nothing new starts; what never started is cancelled (once).
            unstarted_cancelled = true;
            for i in ready.drain() {
                cancel_unstarted(i, ids, &abort, &mut outcomes);
            }
            for i in 0..n {
                if outcomes[i].is_none() && running_ids[i].is_none() {
                    cancel_unstarted(i, ids, &abort, &mut outcomes);
                }
            }
        }
        let Some((i, r)) = running.next().await else {
            break;
        };
        running_ids[i] = None;
        let mut t = TaskOutcome::from_kernel(ids[i].clone(), r);
        let good = t.succeeded();
        if !good && t.status == Status::Cancelled {
            if let Some(why) = &abort {
                t.errors.push(why.clone());
            }
        }
        outcomes[i] = Some(t);
        if good {
            for &d in &dependents[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 && outcomes[d].is_none() {
                    ready.push(d, p.costs[d]);
                }
            }
        } else {
            ended_badly(
                i,
                cascading,
                &mut abort,
                ids,
                &dependents,
                &mut outcomes,
                &running_ids,
                o,
            );
        }
    }
    let wall = t0.elapsed();
    let tasks: Vec<TaskOutcome> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                TaskOutcome::never_ran(
                    ids[i].clone(),
                    Status::Skipped,
                    "skipped: its dependencies never all succeeded".into(),
                )
            })
        })
        .collect();
    let ok = tasks.iter().all(TaskOutcome::succeeded);
    o.kernel.run_finished(
        &run,
        "execute_graph",
        if ok { "succeeded" } else { "failed" },
    );
    let metrics = Metrics::new(&tasks, wall, started_cost(&tasks, &p.costs));
    Ok(OrchestrationResult {
        tasks,
        metrics,
        merged: None,
    })
}

/// Task `i` failed, timed out or was cancelled: cascading cancels the rest of the run,
/// isolated skips its dependents only.
#[allow(clippy::too_many_arguments)]
fn ended_badly(
    i: usize,
    cascading: bool,
    abort: &mut Option<String>,
    ids: &[Arc<str>],
    dependents: &[Vec<usize>],
    outcomes: &mut [Option<TaskOutcome>],
    running_ids: &[Option<TaskId>],
    o: &ToolsOrchestrator,
) {
    if !cascading {
        skip_dependents(i, ids, dependents, outcomes);
        return;
    }
    if abort.is_some() {
        return;
    }
    let status = outcomes[i].as_ref().map_or(Status::Failed, |t| t.status);
    *abort = Some(format!(
        "cancelled: task `{}` {status} (cascading cancellation)",
        ids[i]
    ));
    for id in running_ids.iter().flatten() {
        o.kernel.cancel(*id);
    }
}

fn cancel_unstarted(
    i: usize,
    ids: &[Arc<str>],
    abort: &Option<String>,
    outcomes: &mut [Option<TaskOutcome>],
) {
    if outcomes[i].is_none() {
        let why = abort.clone().unwrap_or_else(|| "cancelled".into());
        outcomes[i] = Some(TaskOutcome::never_ran(
            ids[i].clone(),
            Status::Cancelled,
            why,
        ));
    }
}

/// Every task downstream of `i` that has not ended is skipped, transitively.
fn skip_dependents(
    i: usize,
    ids: &[Arc<str>],
    dependents: &[Vec<usize>],
    outcomes: &mut [Option<TaskOutcome>],
) {
    let mut stack = vec![i];
    while let Some(j) = stack.pop() {
        let status = outcomes[j].as_ref().map_or(Status::Skipped, |t| t.status);
        for &d in &dependents[j] {
            if outcomes[d].is_none() {
                let why = if status == Status::Skipped {
                    format!("skipped: dependency `{}` was skipped", ids[j])
                } else {
                    format!("skipped: dependency `{}` {status}", ids[j])
                };
                outcomes[d] = Some(TaskOutcome::never_ran(ids[d].clone(), Status::Skipped, why));
                stack.push(d);
            }
        }
    }
}

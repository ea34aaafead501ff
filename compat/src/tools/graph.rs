//! `TaskGraph`: tasks plus `depends_on` edges, checked when built (duplicate ids, unknown
//! dependencies, cycles named by their path).

use std::collections::HashMap;
use std::sync::Arc;

use super::spec::TaskSpec;

/// Why a task graph (or a task list) was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two tasks have the same id.
    #[error("duplicate task id `{0}`")]
    DuplicateId(String),
    /// A dependency names no task.
    #[error("task `{task}` depends on `{dependency}`, which is not a task of the graph")]
    UnknownDependency {
        /// The task.
        task: String,
        /// The unknown id.
        dependency: String,
    },
    /// The dependencies form a cycle: each id depends on the next, the last is the first.
    #[error("dependency cycle: {} (each task depends on the next)", cycle.join(" -> "))]
    Cycle {
        /// The ids along the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// A task's cost estimate is negative or not a number.
    #[error("task `{task}`: cost must be a non-negative number, found {cost}")]
    Cost {
        /// The task.
        task: String,
        /// The cost found.
        cost: f64,
    },
}

/// The legacy `TaskGraph`: tasks and their dependencies, a DAG. Build it with
/// [`TaskGraph::builder`].
#[derive(Clone, Debug)]
pub struct TaskGraph {
    pub(crate) tasks: Vec<TaskSpec>,
    pub(crate) ids: Vec<Arc<str>>,
    pub(crate) deps: Vec<Vec<usize>>,
    pub(crate) dependents: Vec<Vec<usize>>,
}

impl TaskGraph {
    /// An empty builder.
    pub fn builder() -> TaskGraphBuilder {
        TaskGraphBuilder::default()
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it has no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Task ids in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(|s| &**s)
    }

    /// The ids `id` depends on.
    pub fn dependencies(&self, id: &str) -> Vec<&str> {
        match self.ids.iter().position(|i| &**i == id) {
            Some(i) => self.deps[i].iter().map(|&d| &*self.ids[d]).collect(),
            None => Vec::new(),
        }
    }
}

/// Collects tasks and edges; [`TaskGraphBuilder::build`] checks them.
#[derive(Clone, Debug, Default)]
pub struct TaskGraphBuilder {
    tasks: Vec<(TaskSpec, Vec<String>)>,
}

impl TaskGraphBuilder {
    /// Adds a task with no dependency (its id is `task-N`, 1-based, if it has none).
    pub fn task(mut self, spec: TaskSpec) -> Self {
        self.tasks.push((spec, Vec::new()));
        self
    }

    /// Adds a task that starts only after every task of `deps` (by id) ended successfully.
    pub fn task_after<I, S>(mut self, spec: TaskSpec, deps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tasks
            .push((spec, deps.into_iter().map(Into::into).collect()));
        self
    }

    /// Checks the graph: unique ids, known dependencies, valid costs, no cycle.
    pub fn build(self) -> Result<TaskGraph, GraphError> {
        let (specs, dep_names): (Vec<_>, Vec<_>) = self.tasks.into_iter().unzip();
        let ids = assign_ids(&specs)?;
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, s)| (&**s, i)).collect();
        let mut deps = Vec::with_capacity(specs.len());
        for (i, names) in dep_names.iter().enumerate() {
            let mut d = Vec::with_capacity(names.len());
            for n in names {
                match index.get(n.as_str()) {
                    Some(&j) => {
                        if !d.contains(&j) {
                            d.push(j);
                        }
                    }
                    None => {
                        return Err(GraphError::UnknownDependency {
                            task: ids[i].to_string(),
                            dependency: n.clone(),
                        })
                    }
                }
            }
            deps.push(d);
        }
        if let Some(cycle) = find_cycle(&deps) {
            return Err(GraphError::Cycle {
                cycle: cycle.into_iter().map(|i| ids[i].to_string()).collect(),
            });
        }
        let mut dependents = vec![Vec::new(); specs.len()];
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                dependents[j].push(i);
            }
        }
        Ok(TaskGraph {
            tasks: specs,
            ids,
            deps,
            dependents,
        })
    }
}

/// The ids of a task list (`task-N` for those without one), refusing duplicates and bad costs.
/// Generated ids are unique among themselves, so the duplicate check runs only when some task
/// brings its own id.
pub(crate) fn assign_ids(specs: &[TaskSpec]) -> Result<Vec<Arc<str>>, GraphError> {
    use std::fmt::Write;
    let mut ids = Vec::with_capacity(specs.len());
    let mut buf = String::with_capacity(16);
    let mut explicit = false;
    for (i, s) in specs.iter().enumerate() {
        let id: Arc<str> = match &s.id {
            Some(id) => {
                explicit = true;
                Arc::from(id.as_str())
            }
            None => {
                buf.clear();
                let _ = write!(buf, "task-{}", i + 1);
                Arc::from(buf.as_str())
            }
        };
        if let Some(c) = s.cost_estimate() {
            if !(c.is_finite() && c >= 0.0) {
                return Err(GraphError::Cost {
                    task: id.to_string(),
                    cost: c,
                });
            }
        }
        ids.push(id);
    }
    if explicit {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in &ids {
            if !seen.insert(&**id) {
                return Err(GraphError::DuplicateId(id.to_string()));
            }
        }
    }
    Ok(ids)
}

/// A cycle of the "depends on" relation, as the path `a, b, ..., a`, if there is one
/// (iterative depth-first search, so deep graphs cannot overflow the stack).
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, next edge to look at)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = deps[node].get(*edge) {
                *edge += 1;
                match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::OnPath;
                        stack.push((next, 0));
                    }
                    Mark::OnPath => {
                        let from = stack.iter().position(|&(n, _)| n == next).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn finds_the_cycle_path() {
        // 0 -> 1 -> 2 -> 1, 3 alone
        let deps = vec![vec![1], vec![2], vec![1], vec![]];
        assert_eq!(find_cycle(&deps), Some(vec![1, 2, 1]));
        assert_eq!(find_cycle(&[vec![0]]), Some(vec![0, 0]));
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
    }
}

//! Which stages a build runs, in what order, and how many at once: dependencies first,
//! independent stages concurrently, cycles refused the way BuildKit words them.

use std::sync::{Condvar, Mutex};

/// The stages the target needs, dependencies first (file order where free). `deps(i)` lists
/// the stages stage `i` needs: its FROM stage (always an earlier one) and the stages its
/// `COPY --from` and `RUN --mount from=` name (any stage: BuildKit allows forward
/// references). On a cycle: the stage whose reference closes it, the stage it names, and
/// BuildKit's message.
pub(crate) fn ordered_stages(
    names: &[Option<String>],
    deps: &dyn Fn(usize) -> Vec<usize>,
    target: usize,
) -> Result<Vec<usize>, (usize, usize, String)> {
    // 0 = not seen, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; names.len()];
    let mut order = Vec::new();
    fn visit(
        i: usize,
        from: usize,
        deps: &dyn Fn(usize) -> Vec<usize>,
        mark: &mut [u8],
        order: &mut Vec<usize>,
        names: &[Option<String>],
    ) -> Result<(), (usize, usize, String)> {
        match mark[i] {
            2 => return Ok(()),
            1 => {
                let name = names[i].clone().unwrap_or_else(|| format!("stage-{i}"));
                return Err((
                    from,
                    i,
                    format!("circular dependency detected on stage: {name}"),
                ));
            }
            _ => {}
        }
        mark[i] = 1;
        let mut ds = deps(i);
        ds.sort_unstable();
        ds.dedup();
        for d in ds {
            visit(d, i, deps, mark, order, names)?;
        }
        mark[i] = 2;
        order.push(i);
        Ok(())
    }
    visit(target, target, deps, &mut mark, &mut order, names)?;
    Ok(order)
}

/// Builds one stage from the stages finished so far.
pub(crate) type StageFn<'a, T, E> = dyn Fn(usize, &[Option<T>]) -> Result<T, E> + Sync + 'a;

struct Board<T, E> {
    done: Vec<Option<T>>,
    failed: Option<E>,
}

/// Runs the stages of `order` (dependencies first), each as soon as the stages it needs are
/// done, up to `jobs` at once; `run(i, finished)` builds stage `i` seeing the stages
/// finished so far. The first failure stops stages that have not started and is returned.
pub(crate) fn run_stages<T, E>(
    order: &[usize],
    count: usize,
    jobs: usize,
    deps: &(dyn Fn(usize) -> Vec<usize> + Sync),
    run: &StageFn<'_, T, E>,
) -> Result<Vec<Option<T>>, E>
where
    T: Clone + Send,
    E: Send,
{
    let board = Mutex::new(Board {
        done: (0..count).map(|_| None).collect(),
        failed: None,
    });
    let changed = Condvar::new();
    let running = Mutex::new(0usize);
    std::thread::scope(|s| {
        for &i in order {
            let (board, changed, running) = (&board, &changed, &running);
            s.spawn(move || {
                let needs = deps(i);
                let finished = {
                    let mut b = board.lock().expect("stage board");
                    loop {
                        if b.failed.is_some() {
                            return;
                        }
                        let ready = needs.iter().all(|&d| b.done[d].is_some());
                        let mut r = running.lock().expect("stage slots");
                        if ready && *r < jobs.max(1) {
                            *r += 1;
                            break b.done.clone();
                        }
                        drop(r);
                        b = changed.wait(b).expect("stage board");
                    }
                };
                let result = run(i, &finished);
                let mut b = board.lock().expect("stage board");
                *running.lock().expect("stage slots") -= 1;
                match result {
                    Ok(state) => b.done[i] = Some(state),
                    Err(e) => {
                        if b.failed.is_none() {
                            b.failed = Some(e);
                        }
                    }
                }
                changed.notify_all();
            });
        }
    });
    let b = board.into_inner().expect("stage board");
    match b.failed {
        Some(e) => Err(e),
        None => Ok(b.done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn n(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    #[test]
    fn stages_order_dependencies_first_and_reject_cycles() {
        let names = n(&["a", "b", "c", ""]);
        let graph = |edges: Vec<Vec<usize>>| move |i: usize| edges[i].clone();
        let deps = graph(vec![vec![], vec![0], vec![1], vec![2]]);
        assert_eq!(ordered_stages(&names, &deps, 3).unwrap(), [0, 1, 2, 3]);
        assert_eq!(ordered_stages(&names, &deps, 0).unwrap(), [0]);
        let forward = graph(vec![vec![2], vec![], vec![], vec![]]);
        assert_eq!(ordered_stages(&names, &forward, 0).unwrap(), [2, 0]);
        let selfref = graph(vec![vec![0], vec![], vec![], vec![]]);
        assert_eq!(
            ordered_stages(&names, &selfref, 0).unwrap_err().2,
            "circular dependency detected on stage: a"
        );
        let ring = graph(vec![vec![2], vec![], vec![0], vec![0]]);
        let e = ordered_stages(&names, &ring, 3).unwrap_err();
        assert_eq!(
            (e.0, e.1, e.2.as_str()),
            (2, 0, "circular dependency detected on stage: a")
        );
        let unnamed = graph(vec![vec![], vec![], vec![], vec![3]]);
        assert_eq!(
            ordered_stages(&names, &unnamed, 3).unwrap_err().2,
            "circular dependency detected on stage: stage-3"
        );
    }

    #[test]
    fn independent_stages_overlap_and_dependents_wait() {
        // 0 and 1 are independent (both sleep); 2 needs both.
        let deps = |i: usize| if i == 2 { vec![0, 1] } else { vec![] };
        let at_once = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let run = |i: usize, done: &[Option<usize>]| -> Result<usize, String> {
            let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            if i == 2 {
                assert!(done[0].is_some() && done[1].is_some());
            } else {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            at_once.fetch_sub(1, Ordering::SeqCst);
            Ok(i * 10)
        };
        let out = run_stages(&[0, 1, 2], 3, 4, &deps, &run).unwrap();
        assert_eq!(out, [Some(0), Some(10), Some(20)]);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // One at a time when asked.
        peak.store(0, Ordering::SeqCst);
        run_stages(&[0, 1, 2], 3, 1, &deps, &run).unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failure_stops_what_has_not_started() {
        let deps = |i: usize| if i == 1 { vec![0] } else { vec![] };
        let ran = AtomicUsize::new(0);
        let run = |i: usize, _: &[Option<()>]| -> Result<(), String> {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 0 {
                Err("stage 0 failed".into())
            } else {
                Ok(())
            }
        };
        assert_eq!(
            run_stages(&[0, 1], 2, 2, &deps, &run).unwrap_err(),
            "stage 0 failed"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}

//! Work spread over the cores: capture and restore each read or write many files,
//! one worker thread per core.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Worker threads to use: one per core, at least 2 (file I/O waits), at most 8.
pub(crate) fn count() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}

/// Calls `each(i)` for every `i` in `0..n`, on [`count`] threads, each taking the
/// next index; once a call returns `Break`, no further index is started.
pub(crate) fn for_each_index(n: usize, each: impl Fn(usize) -> ControlFlow<()> + Sync) {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..count() {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if each(i).is_break() {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_index_once_and_none_started_after_a_break() {
        let seen = Mutex::new(Vec::new());
        for_each_index(1000, |i| {
            seen.lock().expect("lock").push(i);
            ControlFlow::Continue(())
        });
        let mut seen = seen.into_inner().expect("lock");
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());

        let started = AtomicUsize::new(0);
        let at_break = AtomicUsize::new(usize::MAX);
        for_each_index(1000, |i| {
            let n = started.fetch_add(1, Ordering::SeqCst) + 1;
            if i == 10 {
                at_break.store(n, Ordering::SeqCst);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        // After the break, workers already past the check may start one more each
        // (counted from the break: a descheduled worker may take index 10 late).
        let (started, at_break) = (started.into_inner(), at_break.into_inner());
        assert!(
            started <= at_break + count(),
            "{started} > {at_break} + {}",
            count()
        );
    }
}

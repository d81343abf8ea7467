//! Data parallelism on scoped threads, one per core: the resolve steps
//! split their rows in contiguous ranges ([`ranges`], [`chunks`]), the
//! encoders and ingest's preparation map over items ([`map`]). Results come
//! back in input order; a panic in a worker is resumed on the caller.

use std::ops::Range;

/// The cores this process may use (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// `f` over `0..n` split in one contiguous range per core: one result per
/// range, in order. Below 10,000 items one range on this thread.
pub fn ranges<R: Send>(n: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    ranges_if(n >= 10_000, n, f)
}

/// [`ranges`] when `worth_it`, else one range on this thread.
pub fn ranges_if<R: Send>(
    worth_it: bool,
    n: usize,
    f: impl Fn(Range<usize>) -> R + Sync,
) -> Vec<R> {
    let threads = cores();
    if threads < 2 || !worth_it || n < threads {
        return vec![f(0..n)];
    }
    let step = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..n)
            .step_by(step)
            .map(|start| scope.spawn(move || f(start..(start + step).min(n))))
            .collect();
        parts.into_iter().map(join).collect()
    })
}

/// `f` over `0..n` in parallel ranges, results concatenated in order.
pub fn chunks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    ranges(n, f).into_iter().flatten().collect()
}

/// `f` over `items` on one thread per core, in order (any length: an
/// encoder's forward pass per item is worth a thread).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = cores();
    if items.len() < 2 || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts.into_iter().flat_map(join).collect()
    })
}

fn join<R>(h: std::thread::ScopedJoinHandle<'_, R>) -> R {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_input_order() {
        let n = 100_003;
        let all = chunks(n, |r| r.collect::<Vec<_>>());
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        let items: Vec<u32> = (0..1001).collect();
        assert_eq!(
            map(&items, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        let parts = ranges(n, |r| r.len());
        assert_eq!(parts.iter().sum::<usize>(), n);
        assert_eq!(ranges_if(false, n, |r| r), vec![0..n]);
    }
}

//! The cycle and depth check of nested traffic splits: one linear, iterative pass that the
//! table validation and the controller's TrafficSplit translation both call.
//!
//! Nodes are service ports (indices), an edge `root → backend` is one backend of one split.
//! The pass peels the graph from its sinks up (Kahn's algorithm), which gives every node that
//! reaches no cycle its *height*: the number of splits a request passes through from it. What
//! is left over reaches a cycle; walking it finds disjoint cycles to report. Nothing recurses,
//! so a chain of any length costs memory on the heap, not the stack.

/// Most splits one request may pass through (a split whose backend is itself a split root
/// counts twice). Deeper chains are refused: each level costs a pick per request, and a
/// chain this deep is a mistake, not a canary.
pub const MAX_SPLIT_DEPTH: u32 = 16;

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Per node, the number of splits a request passes through from it; `None` when the node
    /// reaches a cycle.
    pub heights: Vec<Option<u32>>,
    /// Disjoint cycles, each as its nodes in edge order with the first repeated at the end.
    /// Empty exactly when the graph has no cycle.
    pub cycles: Vec<Vec<usize>>,
    /// Units of work done (node and edge visits), for tests that prove the pass linear.
    pub steps: usize,
}

impl Report {
    /// Nodes from which a request passes through more than [`MAX_SPLIT_DEPTH`] splits.
    pub fn too_deep(&self) -> impl Iterator<Item = usize> + '_ {
        self.heights
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_some_and(|h| h > MAX_SPLIT_DEPTH))
            .map(|(i, _)| i)
    }

    /// The height of a node (0 for a node without splits), `None` when it reaches a cycle.
    pub fn height(&self, node: usize) -> Option<u32> {
        self.heights.get(node).copied().flatten()
    }
}

/// Checks the split graph of `nodes` nodes and these `root → backend` edges (edges out of range
/// are ignored). Linear in nodes + edges, whatever the shape.
pub fn check(nodes: usize, edges: &[(usize, usize)]) -> Report {
    let mut steps = 0usize;
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(a, b)| a < nodes && b < nodes)
        .collect();
    // Compressed adjacency, both directions.
    let out = Adjacency::new(nodes, edges.iter().copied());
    let inc = Adjacency::new(nodes, edges.iter().map(|&(a, b)| (b, a)));
    steps += nodes + 2 * edges.len();

    // Kahn from the sinks: a node is settled once all its backends are.
    let mut unsettled: Vec<usize> = (0..nodes).map(|i| out.of(i).len()).collect();
    let mut heights: Vec<Option<u32>> = vec![None; nodes];
    let mut queue: Vec<usize> = (0..nodes).filter(|&i| unsettled[i] == 0).collect();
    for &i in &queue {
        heights[i] = Some(0);
    }
    let mut head = 0;
    while head < queue.len() {
        let n = queue[head];
        head += 1;
        steps += 1;
        let h = heights[n].unwrap_or(0);
        for &parent in inc.of(n) {
            steps += 1;
            let ph = heights[parent].get_or_insert(0);
            *ph = (*ph).max(h.saturating_add(1));
            unsettled[parent] -= 1;
            if unsettled[parent] == 0 {
                queue.push(parent);
            }
        }
    }
    // Nodes never settled reach a cycle: each still has an edge to another unsettled node.
    // Walk such edges; a walk that meets its own trail has found a cycle, one that meets an
    // earlier walk stops. Every node is walked at most once.
    let mut cycles = Vec::new();
    if queue.len() < nodes {
        let mut settled = vec![false; nodes];
        for &i in &queue {
            settled[i] = true;
        }
        for (h, &ok) in heights.iter_mut().zip(&settled) {
            if !ok {
                *h = None;
            }
        }
        let mut walk_of = vec![usize::MAX; nodes];
        for start in 0..nodes {
            if settled[start] || walk_of[start] != usize::MAX {
                continue;
            }
            let mut trail = Vec::new();
            let mut n = start;
            loop {
                steps += 1;
                if walk_of[n] == start {
                    let pos = trail.iter().position(|&t| t == n).unwrap_or(0);
                    let mut cycle = trail.split_off(pos);
                    cycle.push(n);
                    cycles.push(cycle);
                    break;
                }
                if walk_of[n] != usize::MAX {
                    break;
                }
                walk_of[n] = start;
                trail.push(n);
                let next = out.of(n).iter().copied().find(|&b| {
                    steps += 1;
                    !settled[b]
                });
                match next {
                    Some(b) => n = b,
                    None => break, // cannot happen for an unsettled node; stop safely
                }
            }
            steps += trail.len();
        }
    }
    Report {
        heights,
        cycles,
        steps,
    }
}

/// Edges grouped by source, in one allocation.
struct Adjacency {
    start: Vec<usize>,
    targets: Vec<usize>,
}

impl Adjacency {
    fn new(nodes: usize, edges: impl Iterator<Item = (usize, usize)> + Clone) -> Self {
        let mut start = vec![0usize; nodes + 1];
        for (a, _) in edges.clone() {
            start[a + 1] += 1;
        }
        for i in 0..nodes {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut targets = vec![0usize; start[nodes]];
        for (a, b) in edges {
            targets[fill[a]] = b;
            fill[a] += 1;
        }
        Adjacency { start, targets }
    }

    fn of(&self, n: usize) -> &[usize] {
        &self.targets[self.start[n]..self.start[n + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<(usize, usize)> {
        (0..n.saturating_sub(1)).map(|i| (i, i + 1)).collect()
    }

    #[test]
    fn heights_of_a_dag() {
        // 0 → 1 → 2, 0 → 3, 4 alone.
        let r = check(5, &[(0, 1), (1, 2), (0, 3)]);
        assert_eq!(r.heights, [Some(2), Some(1), Some(0), Some(0), Some(0)]);
        assert!(r.cycles.is_empty());
        assert_eq!(r.too_deep().count(), 0);
    }

    #[test]
    fn finds_cycles_and_what_reaches_them() {
        // 0 → 1 → 2 → 1 (cycle 1,2), 3 → 3 (self), 4 → 5 (fine).
        let r = check(6, &[(0, 1), (1, 2), (2, 1), (3, 3), (4, 5)]);
        assert_eq!(r.heights, [None, None, None, None, Some(1), Some(0)]);
        assert_eq!(r.cycles, vec![vec![1, 2, 1], vec![3, 3]]);
    }

    #[test]
    fn disjoint_cycles_are_all_found_in_one_pass() {
        let mut edges = Vec::new();
        for k in 0..1000 {
            edges.push((2 * k, 2 * k + 1));
            edges.push((2 * k + 1, 2 * k));
        }
        let r = check(2000, &edges);
        assert_eq!(r.cycles.len(), 1000);
    }

    #[test]
    fn a_chain_of_ten_thousand_is_measured_without_recursion() {
        let r = check(10_000, &chain(10_000));
        assert_eq!(r.height(0), Some(9_999));
        assert_eq!(r.too_deep().count(), 10_000 - MAX_SPLIT_DEPTH as usize - 1);
        // Closing it into one long cycle is found too.
        let mut edges = chain(10_000);
        edges.push((9_999, 0));
        let r = check(10_000, &edges);
        assert_eq!(r.cycles.len(), 1);
        assert_eq!(r.cycles[0].len(), 10_001);
    }

    #[test]
    fn work_is_linear_in_nodes_and_edges() {
        // Shapes that made the old checks quadratic or cubic: long chains in either index
        // order, a chain closed into a cycle, many roots sharing one deep chain.
        let n = 5_000;
        let reversed: Vec<_> = (1..n).map(|i| (i, i - 1)).collect();
        let mut closed = chain(n);
        closed.push((n - 1, 0));
        let mut fan = chain(n / 2);
        fan.extend((n / 2..n).map(|i| (i, 0)));
        for edges in [chain(n), reversed, closed, fan] {
            let r = check(n, &edges);
            assert!(
                r.steps <= 8 * (n + edges.len()),
                "{} steps for {} nodes and {} edges",
                r.steps,
                n,
                edges.len()
            );
        }
    }
}

//! Per-executable estimates of a job's work, learned from finished tasks.

use std::collections::HashMap;
use std::time::Duration;

/// Learns, per executable, the work of one job: its run time on a reference core
/// (speed 1.0, a whole core).
///
/// Each finished task contributes `runtime × rate`, where `rate` is the slot rate of the
/// node it ran on ([`crate::Node::slot_rate`]). The estimate is the plain mean of the
/// first samples and then an exponentially weighted moving average: the weight of a new
/// sample is `max(1/n, alpha)` for the n-th sample, so early estimates are not at the
/// mercy of the first task and later ones follow drift. The spread (standard deviation)
/// is tracked the same way; placement uses it to keep a slow node from getting a job
/// whose size it would turn into the batch's tail.
///
/// Some run times say more about the node than about the job: a run on a node that
/// first had to fetch the executable, or on a slot whose rate the owner's load made
/// uncertain. Those are recorded with [`Estimator::record_unsure`]: they stand in until
/// the first ordinary sample, which replaces them, and are ignored after it. Mixing them
/// in would inflate the estimate and, worse, the spread, and placement would then keep
/// slow nodes idle for fear of a tail that is not there.
///
/// A node's speed is its own claim, and a node may lie (or be slower than it measured
/// itself at start: throttled, shared). So run times also calibrate nodes
/// ([`Estimator::record_on`]): a node's run of an executable whose work other nodes (or
/// the workstation, which is trusted) measured tells how fast it really is, and its
/// [`Estimator::speed_factor`] (at most 1: a claim is never believed upward) scales
/// its claimed speed for placement and for the work its later runs teach. The reference
/// is the median of the other nodes' own measures of that executable, so one node
/// claiming a thousandfold speed neither gets the batch for long nor inflates the
/// estimates everyone else is judged by.
#[derive(Clone, Debug)]
pub struct Estimator {
    alpha: f64,
    per_exe: HashMap<String, Entry>,
    /// Per executable, each node's own measure of its work (mean of its sure samples,
    /// at its calibrated rate); the workstation's under [`TRUSTED`].
    per_node: HashMap<String, HashMap<String, (f64, u64)>>,
    /// Per remote node, the factor its claimed speed is scaled by.
    factors: HashMap<String, f64>,
}

/// The key of the workstation's own runs in the per-node measures.
const TRUSTED: &str = "";

/// The least a node's speed factor can fall to.
pub const MIN_SPEED_FACTOR: f32 = 1.0 / 1024.0;

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Estimated work in reference-core seconds.
    work: f64,
    /// Its (exponentially weighted) variance.
    var: f64,
    samples: u64,
    /// Made only of unsure samples.
    unsure: bool,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::new()
    }
}

impl Estimator {
    /// Default weight of a new sample once enough are known.
    pub const DEFAULT_ALPHA: f64 = 0.1;

    /// An estimator that knows nothing, with [`Estimator::DEFAULT_ALPHA`].
    pub fn new() -> Self {
        Self::with_alpha(Self::DEFAULT_ALPHA)
    }

    /// An estimator whose moving average gives weight `alpha` (clamped to (0, 1]) to a
    /// new sample.
    pub fn with_alpha(alpha: f64) -> Self {
        let alpha = if alpha.is_finite() {
            alpha.clamp(1e-6, 1.0)
        } else {
            Self::DEFAULT_ALPHA
        };
        Self {
            alpha,
            per_exe: HashMap::new(),
            per_node: HashMap::new(),
            factors: HashMap::new(),
        }
    }

    /// Records a fair run of `exe` for `runtime` on a slot of `rate` reference cores
    /// as the node's calibrated speed claims (`node`: `None` for the workstation
    /// itself, whose speed is its own measure and trusted), calibrating the node first
    /// (see the type's docs), then learning the work at the corrected rate.
    pub fn record_on(&mut self, node: Option<&str>, exe: &str, runtime: Duration, rate: f32) {
        let secs = runtime.as_secs_f64();
        let rate64 = f64::from(rate);
        if !(rate64.is_finite() && rate64 > 0.0 && secs.is_finite() && secs > 0.0) {
            return;
        }
        let key = node.unwrap_or(TRUSTED);
        let mut corrected = rate64;
        if let Some(node) = node {
            let mut others: Vec<f64> = self
                .per_node
                .get(exe)
                .into_iter()
                .flatten()
                .filter(|(n, _)| n.as_str() != node)
                .map(|(_, &(w, _))| w)
                .collect();
            if !others.is_empty() {
                others.sort_by(f64::total_cmp);
                let reference = others[others.len() / 2];
                // What the slot really delivered, against what its claim said.
                let ratio = reference / secs / rate64;
                let old = self.factors.get(node).copied().unwrap_or(1.0);
                let n = self
                    .per_node
                    .get(exe)
                    .and_then(|m| m.get(node))
                    .map_or(0, |e| e.1);
                let a = (1.0 / (n + 1) as f64).max(0.3);
                let new = (old + a * (old * ratio - old)).clamp(f64::from(MIN_SPEED_FACTOR), 1.0);
                if new.is_finite() {
                    self.factors.insert(node.to_owned(), new);
                    corrected = rate64 * new / old;
                }
            }
        }
        let work = secs * corrected;
        let e = self
            .per_node
            .entry(exe.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_insert((work, 0));
        e.1 += 1;
        e.0 += (work - e.0) / e.1 as f64;
        self.add(exe, runtime, corrected as f32, false);
    }

    /// The factor placement scales `node`'s claimed speed by: 1 until its runs showed
    /// it slower than it claims, never more than 1, at least [`MIN_SPEED_FACTOR`].
    pub fn speed_factor(&self, node: &str) -> f32 {
        self.factors.get(node).map_or(1.0, |&f| f as f32)
    }

    /// Records that a task of `exe` ran for `runtime` on a slot delivering `rate`
    /// reference cores. Samples with a rate that is not a positive number are ignored.
    pub fn record(&mut self, exe: &str, runtime: Duration, rate: f32) {
        self.add(exe, runtime, rate, false);
    }

    /// Records a run time that may say more about the node than the job (see the type's
    /// docs): used only until `exe` has an ordinary sample.
    pub fn record_unsure(&mut self, exe: &str, runtime: Duration, rate: f32) {
        self.add(exe, runtime, rate, true);
    }

    fn add(&mut self, exe: &str, runtime: Duration, rate: f32, unsure: bool) {
        let rate = f64::from(rate);
        if !(rate.is_finite() && rate > 0.0) {
            return;
        }
        let work = runtime.as_secs_f64() * rate;
        if !work.is_finite() {
            return;
        }
        match self.per_exe.get_mut(exe) {
            Some(e) if unsure && !e.unsure => {}
            Some(e) if !e.unsure || unsure => {
                e.samples += 1;
                let a = (1.0 / e.samples as f64).max(self.alpha);
                let d = work - e.work;
                e.work += a * d;
                e.var = (1.0 - a) * (e.var + a * d * d);
            }
            // The first ordinary sample replaces unsure ones; so does the first of all.
            _ => {
                let e = Entry {
                    work,
                    var: 0.0,
                    samples: 1,
                    unsure,
                };
                self.per_exe.insert(exe.to_owned(), e);
            }
        }
    }

    /// The estimated work of one job of `exe` (reference-core time), if any task of it
    /// finished.
    pub fn estimate(&self, exe: &str) -> Option<Duration> {
        self.per_exe
            .get(exe)
            .map(|e| Duration::from_secs_f64(e.work.clamp(0.0, 1e9)))
    }

    /// The spread (standard deviation) of one job's work for `exe`, once at least two
    /// tasks of it finished.
    pub fn spread(&self, exe: &str) -> Option<Duration> {
        self.per_exe
            .get(exe)
            .filter(|e| e.samples >= 2)
            .map(|e| Duration::from_secs_f64(e.var.max(0.0).sqrt().min(1e9)))
    }

    /// How many samples the estimate of `exe` is made of.
    pub fn samples(&self, exe: &str) -> u64 {
        self.per_exe.get(exe).map_or(0, |e| e.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_node_claiming_a_thousandfold_speed_is_calibrated_down_by_its_run_times() {
        let mut e = Estimator::new();
        // The workstation (trusted) measured 2 s of work per job.
        e.record_on(None, "cc1", secs(2.0), 1.0);
        // honest claims 1.0 and takes 2 s; liar claims 1000 and also takes 2 s.
        e.record_on(Some("honest"), "cc1", secs(2.0), 1.0);
        assert_eq!(e.speed_factor("honest"), 1.0);
        let mut claimed = 1000.0_f32;
        for _ in 0..12 {
            let rate = claimed * e.speed_factor("liar");
            e.record_on(Some("liar"), "cc1", secs(2.0), rate);
            claimed = 1000.0;
        }
        let effective = 1000.0 * e.speed_factor("liar");
        assert!((0.8..=1.25).contains(&effective), "{effective}");
        // The work estimate stays near the truth for everyone else.
        let w = e.estimate("cc1").unwrap().as_secs_f64();
        assert!(w < 100.0, "{w}");
        assert_eq!(e.speed_factor("honest"), 1.0);
    }

    #[test]
    fn a_claim_is_never_believed_upward_and_no_reference_means_no_change() {
        let mut e = Estimator::new();
        // Nobody else measured it: nothing to calibrate against.
        e.record_on(Some("a"), "x", secs(1.0), 1.0);
        assert_eq!(e.speed_factor("a"), 1.0);
        // b runs it ten times faster than it claims: still 1.
        e.record_on(Some("b"), "x", secs(0.1), 1.0);
        assert_eq!(e.speed_factor("b"), 1.0);
        // A node slower than it claims by half converges near 0.5.
        for _ in 0..20 {
            let rate = e.speed_factor("c");
            e.record_on(Some("c"), "x", secs(2.0), rate);
        }
        let f = e.speed_factor("c");
        assert!((0.4..=0.6).contains(&f), "{f}");
        // The floor holds for nonsense.
        e.record_on(Some("d"), "x", secs(1e9), 1.0);
        assert!(e.speed_factor("d") >= MIN_SPEED_FACTOR);
    }

    #[test]
    fn unknown_exe_has_no_estimate() {
        let e = Estimator::new();
        assert_eq!(e.estimate("cc1"), None);
        assert_eq!(e.samples("cc1"), 0);
    }

    #[test]
    fn work_is_runtime_times_rate_and_first_samples_are_averaged() {
        let mut e = Estimator::new();
        // 4 s on a quarter-speed slot = 1 s of work; 0.5 s on a double-speed slot = 1 s.
        e.record("convert", secs(4.0), 0.25);
        e.record("convert", secs(0.5), 2.0);
        e.record("convert", secs(4.0), 1.0);
        let w = e.estimate("convert").unwrap().as_secs_f64();
        assert!((w - 2.0).abs() < 1e-9, "{w}");
        assert_eq!(e.samples("convert"), 3);
        assert_eq!(e.estimate("cc1"), None);
    }

    #[test]
    fn later_samples_move_the_estimate_by_alpha() {
        let mut e = Estimator::with_alpha(0.5);
        e.record("x", secs(1.0), 1.0);
        e.record("x", secs(3.0), 1.0); // weight max(1/2, 0.5): 2.0
        e.record("x", secs(4.0), 1.0); // weight max(1/3, 0.5): 3.0
        let w = e.estimate("x").unwrap().as_secs_f64();
        assert!((w - 3.0).abs() < 1e-9, "{w}");
    }

    #[test]
    fn spread_is_the_standard_deviation_of_the_samples() {
        let mut e = Estimator::with_alpha(0.01);
        e.record("x", secs(1.0), 1.0);
        assert_eq!(
            e.spread("x"),
            None,
            "one sample says nothing about the spread"
        );
        e.record("x", secs(3.0), 1.0);
        let sd = e.spread("x").unwrap().as_secs_f64();
        assert!((sd - 1.0).abs() < 1e-9, "{sd}");
        for _ in 0..20 {
            e.record("x", secs(1.0), 1.0);
            e.record("x", secs(3.0), 1.0);
        }
        let sd = e.spread("x").unwrap().as_secs_f64();
        assert!((sd - 1.0).abs() < 0.05, "{sd}");
        let w = e.estimate("x").unwrap().as_secs_f64();
        assert!((w - 2.0).abs() < 0.05, "{w}");
    }

    #[test]
    fn nonsense_rates_are_ignored() {
        let mut e = Estimator::new();
        e.record("x", secs(1.0), 0.0);
        e.record("x", secs(1.0), f32::NAN);
        e.record("x", secs(1.0), -1.0);
        assert_eq!(e.estimate("x"), None);
    }

    #[test]
    fn unsure_samples_stand_in_until_an_ordinary_one_replaces_them() {
        let mut e = Estimator::new();
        e.record_unsure("x", secs(9.0), 1.0);
        e.record_unsure("x", secs(3.0), 1.0);
        assert_eq!(e.estimate("x"), Some(secs(6.0)));
        assert_eq!(e.samples("x"), 2);
        e.record("x", secs(1.5), 1.0);
        assert_eq!(e.estimate("x"), Some(secs(1.5)));
        assert_eq!(e.spread("x"), None, "one ordinary sample: no spread yet");
        e.record_unsure("x", secs(20.0), 1.0);
        e.record("x", secs(1.5), 1.0);
        assert_eq!(e.estimate("x"), Some(secs(1.5)));
        assert_eq!(
            e.spread("x"),
            Some(secs(0.0)),
            "the unsure sample was ignored"
        );
    }
}

//! The seqs of a terminal's stream stored so far, kept as runs, and how far its watermark
//! goes over them and over what the terminal reported dropped or never numbered.

/// The seqs of one (terminal, stream) stored so far, as runs `first..=last` in order and
/// apart (two runs never touch). Seqs are as stored: one beyond `i64` is a negative number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Runs(pub(super) Vec<(i64, i64)>);

impl Runs {
    /// The runs of a stored array (first and last of each run), put in order and merged
    /// whatever it holds.
    pub(super) fn from_flat(flat: &[i64]) -> Runs {
        let mut pairs: Vec<(i64, i64)> = flat
            .chunks_exact(2)
            .filter(|c| c[0] <= c[1])
            .map(|c| (c[0], c[1]))
            .collect();
        pairs.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::with_capacity(pairs.len());
        for (first, last) in pairs {
            match runs.last_mut() {
                Some(run) if first <= run.1.saturating_add(1) => run.1 = run.1.max(last),
                _ => runs.push((first, last)),
            }
        }
        Runs(runs)
    }

    /// The array stored: first and last of each run.
    pub(super) fn flat(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().flat_map(|&(first, last)| [first, last])
    }

    /// Adds `seq`: false if it was stored already.
    pub(super) fn insert(&mut self, seq: i64) -> bool {
        let runs = &mut self.0;
        // Nearly always: the seq after the last run, or later.
        match runs.last_mut() {
            None => {
                runs.push((seq, seq));
                return true;
            }
            Some(last) if seq > last.1 => {
                if seq == last.1 + 1 {
                    last.1 = seq;
                } else {
                    runs.push((seq, seq));
                }
                return true;
            }
            Some(_) => {}
        }
        // The first run ending at or after `seq` (there is one: the last).
        let i = runs.partition_point(|r| r.1 < seq);
        if runs[i].0 <= seq {
            return false;
        }
        let joins_next = seq + 1 == runs[i].0;
        let joins_previous = i > 0 && runs[i - 1].1 + 1 == seq;
        match (joins_previous, joins_next) {
            (true, true) => {
                runs[i - 1].1 = runs[i].1;
                runs.remove(i);
            }
            (true, false) => runs[i - 1].1 = seq,
            (false, true) => runs[i].0 = seq,
            (false, false) => runs.insert(i, (seq, seq)),
        }
        true
    }

    /// Adds the seqs `first..=last` (stored elsewhere: another group's run).
    pub(super) fn add(&mut self, first: i64, last: i64) {
        if first > last {
            return;
        }
        if self.0.last().is_none_or(|r| first > r.1.saturating_add(1)) {
            self.0.push((first, last));
            return;
        }
        let mut flat: Vec<i64> = self.flat().collect();
        flat.extend([first, last]);
        *self = Runs::from_flat(&flat);
    }

    /// The last seq of the run holding `seq`, if one does.
    pub(super) fn end_of(&self, seq: i64) -> Option<i64> {
        let i = self.0.partition_point(|r| r.1 < seq);
        self.0.get(i).filter(|r| r.0 <= seq).map(|r| r.1)
    }
}

/// `watermark` advanced over the stored seqs, the reported drops and the seqs below where the
/// numbering starts (an earlier box's, or never used; not lost), exactly as the SQLite store
/// advances it: repeatedly past a drop or numbering start covering the next seq, then to the end
/// of the run holding it.
pub(super) fn advance(
    mut watermark: i64,
    runs: &Runs,
    drops: &[(i64, i64)],
    numbering: Option<i64>,
) -> i64 {
    loop {
        let before = watermark;
        let Some(next) = watermark.checked_add(1) else {
            break;
        };
        let covered = drops
            .iter()
            .filter(|d| d.0 <= next && d.1 >= next)
            .map(|d| d.1)
            .chain(numbering.map(|n| n - 1).filter(|&n| n >= next))
            .max();
        if let Some(covered) = covered {
            watermark = watermark.max(covered);
        }
        if let Some(end) = watermark.checked_add(1).and_then(|n| runs.end_of(n)) {
            watermark = end;
        }
        if watermark == before {
            return watermark;
        }
    }
    watermark
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(seqs: &[i64]) -> Runs {
        let mut r = Runs::default();
        for &s in seqs {
            r.insert(s);
        }
        r
    }

    #[test]
    fn a_seq_inside_or_at_either_end_of_a_run_is_already_stored_and_one_between_runs_is_new() {
        let mut r = runs(&[1, 2, 3, 4, 5, 10, 11, 12]);
        assert_eq!(r.0, [(1, 5), (10, 12)]);
        for seq in [1, 3, 5, 10, 11, 12] {
            assert!(!r.insert(seq), "{seq} is stored");
        }
        assert_eq!(r.0, [(1, 5), (10, 12)]);
        // Next to the end of a run, next to the start of one, alone, and joining two.
        assert!(r.insert(6));
        assert!(r.insert(9));
        assert!(r.insert(20));
        assert_eq!(r.0, [(1, 6), (9, 12), (20, 20)]);
        assert!(r.insert(7));
        assert!(r.insert(8));
        assert_eq!(r.0, [(1, 12), (20, 20)]);
        assert!(r.insert(0) && r.insert(-5) && r.insert(19));
        assert_eq!(r.0, [(-5, -5), (0, 12), (19, 20)]);
    }

    #[test]
    fn seqs_in_any_order_make_the_same_runs_as_in_order() {
        let want = runs(&(1..=200).filter(|s| s % 17 != 0).collect::<Vec<_>>());
        let mut shuffled: Vec<i64> = (1..=200).filter(|s| s % 17 != 0).collect();
        // A fixed permutation: reversed halves interleaved.
        shuffled.reverse();
        let (a, b) = shuffled.split_at(shuffled.len() / 2);
        let mixed: Vec<i64> = b.iter().zip(a).flat_map(|(x, y)| [*x, *y]).collect();
        let mut r = runs(&mixed);
        for s in &b[a.len()..] {
            r.insert(*s);
        }
        assert_eq!(r, want);
        assert_eq!(r.0.len(), 12);
    }

    #[test]
    fn a_run_added_joins_the_runs_it_touches_or_overlaps_and_a_reversed_one_is_nothing() {
        let mut r = runs(&[1, 2, 3, 10, 11]);
        r.add(20, 25);
        assert_eq!(r.0, [(1, 3), (10, 11), (20, 25)]);
        r.add(4, 9);
        assert_eq!(r.0, [(1, 11), (20, 25)]);
        r.add(15, 21);
        assert_eq!(r.0, [(1, 11), (15, 25)]);
        r.add(5, 4);
        assert_eq!(r.0, [(1, 11), (15, 25)]);
        let mut e = Runs::default();
        e.add(3, 3);
        assert_eq!(e.0, [(3, 3)]);
    }

    #[test]
    fn stored_runs_are_read_in_order_merged_and_without_reversed_pairs() {
        let r = Runs::from_flat(&[10, 12, 1, 5, 6, 7, 4, 4, 20, 19, 30]);
        assert_eq!(r.0, [(1, 7), (10, 12)]);
        assert_eq!(r.flat().collect::<Vec<_>>(), [1, 7, 10, 12]);
        assert_eq!(Runs::from_flat(&[i64::MAX - 1, i64::MAX, 5, 6]).0.len(), 2);
        assert_eq!(r.end_of(1), Some(7));
        assert_eq!(r.end_of(7), Some(7));
        assert_eq!(r.end_of(8), None);
        assert_eq!(r.end_of(11), Some(12));
        assert_eq!(r.end_of(13), None);
    }

    #[test]
    fn the_watermark_goes_to_the_end_of_the_run_after_it_and_through_drops_and_numbering_starts() {
        let r = runs(&[1, 2, 3, 7, 8, 20]);
        assert_eq!(advance(0, &r, &[], None), 3);
        assert_eq!(advance(3, &r, &[], None), 3, "4 is missing");
        // 4..=6 reported lost: on to the end of the next run.
        assert_eq!(advance(0, &r, &[(4, 6)], None), 8);
        // A drop overlapping what is stored, and another one further on.
        assert_eq!(advance(0, &r, &[(2, 5), (6, 6), (9, 19)], None), 20);
        // The numbering starts at 10: 9 and below are passed.
        assert_eq!(advance(0, &r, &[], Some(10)), 9);
        assert_eq!(advance(0, &r, &[], Some(20)), 20);
        // Not below the stored watermark, and never past the last seq there is.
        assert_eq!(advance(50, &r, &[(1, 40)], None), 50);
        let top = runs(&[i64::MAX - 1, i64::MAX]);
        assert_eq!(advance(i64::MAX - 2, &top, &[], None), i64::MAX);
        assert_eq!(advance(i64::MAX, &top, &[], None), i64::MAX);
        // Seqs beyond i64 (stored negative) are never reached.
        assert_eq!(advance(0, &runs(&[-3, -2, 1]), &[], None), 1);
    }
}

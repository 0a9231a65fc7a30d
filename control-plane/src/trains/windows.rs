//! Change windows: when a dedicated cell may start a bake (a `cron` schedule with seconds and a
//! duration; the whole bake must fit).

use super::*;

/// Whether `w` is open at `now`: `Some(closes_at)` if so.
pub fn window_open(w: &ChangeWindow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let schedule = cron::Schedule::from_str(&w.schedule).ok()?;
    let length = TimeDelta::from_std(humantime::parse_duration(&w.duration).ok()?).ok()?;
    // The latest opening at or before `now` is the first one after `now - length` (if it is
    // not after `now`).
    let opening = schedule
        .after(&(now - length - TimeDelta::seconds(1)))
        .next()?;
    (opening <= now && now < opening + length).then_some(opening + length)
}

/// The next time `w` opens after `now` (none for a schedule that never fires).
pub fn next_opening(w: &ChangeWindow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron::Schedule::from_str(&w.schedule)
        .ok()?
        .after(&now)
        .next()
}

/// When a dedicated cell may start a bake of `bake` at or after `now`: now if its window is open
/// with the whole bake left (or it has no window), else the next opening whose window is long
/// enough. `None`: never (the window is shorter than the bake).
pub fn may_start(
    w: Option<&ChangeWindow>,
    bake: TimeDelta,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let Some(w) = w else { return Some(now) };
    if let Some(closes) = window_open(w, now)
        && closes - now >= bake
    {
        return Some(now);
    }
    let length = TimeDelta::from_std(humantime::parse_duration(&w.duration).ok()?).ok()?;
    if length < bake {
        return None;
    }
    next_opening(w, now)
}

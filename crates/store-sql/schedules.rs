//! `schedule_*`: schedules and their firings. A due time is fired once: its firing row's
//! primary key is `(app, schedule, due_at)`, and the schedule must still be at that due time.

use crate::db::{Connection, Row};
use hopper_core::schedule::Overlap;
use hopper_core::UnixMillis;
use hopper_store::{
    CallInserted, FireOutcome, FiringRow, Missing, ScheduleDeploy, ScheduleFire, SchedulePause,
    ScheduleReschedule, ScheduleRow, StoreError,
};

use crate::dialect::{Conn, DbPool, DbRow, LOCK_SCHEDULE};

use crate::map::{call_id, corrupt, db_err, state};

const COLUMNS: &str = "s.spec, s.paused, s.anchor_at, s.next_due_at, s.last_due_at, s.last_call_id,
    (SELECT c.state FROM calls c WHERE c.id = s.last_call_id) AS last_call_state";

fn row(r: &DbRow) -> Result<ScheduleRow, StoreError> {
    let spec: String = r.try_get("spec").map_err(db_err)?;
    Ok(ScheduleRow {
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("schedule spec", e))?,
        paused: r.try_get::<i64, _>("paused").map_err(db_err)? != 0,
        anchor_at: r.try_get("anchor_at").map_err(db_err)?,
        next_due_at: r.try_get("next_due_at").map_err(db_err)?,
        last_due_at: r.try_get("last_due_at").map_err(db_err)?,
        last_call_id: r
            .try_get::<Option<String>, _>("last_call_id")
            .map_err(db_err)?
            .map(|c| call_id(&c))
            .transpose()?,
        last_call_state: r
            .try_get::<Option<String>, _>("last_call_state")
            .map_err(db_err)?
            .map(|s| state(&s))
            .transpose()?,
    })
}

/// Replaces an app's schedules within a deploy's transaction.
pub async fn deploy(
    conn: &mut Conn,
    app: &str,
    schedules: &[ScheduleDeploy],
    now: UnixMillis,
) -> Result<(), StoreError> {
    let names: Vec<String> = schedules.iter().map(|s| s.spec.name.clone()).collect();
    let existing = crate::db::query("SELECT name, spec FROM schedules WHERE app = $1")
        .bind(app)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    for r in &existing {
        let name: String = r.try_get("name").map_err(db_err)?;
        if !names.contains(&name) {
            crate::db::query("DELETE FROM schedules WHERE app = $1 AND name = $2")
                .bind(app)
                .bind(&name)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
    }
    for s in schedules {
        let spec = serde_json::to_string(&s.spec).map_err(|e| corrupt("schedule spec", e))?;
        let unchanged = existing.iter().any(|r| {
            r.try_get::<String, _>("name").ok().as_deref() == Some(s.spec.name.as_str())
                && r.try_get::<String, _>("spec").ok().as_deref() == Some(spec.as_str())
        });
        if unchanged {
            continue;
        }
        // A new or changed definition takes effect at once, due times counted from now.
        crate::db::query(
            "INSERT INTO schedules (app, name, spec, anchor_at, next_due_at, updated_at) VALUES ($1, $2, $3, $4, $5, $4)
             ON CONFLICT (app, name) DO UPDATE SET spec = excluded.spec, anchor_at = excluded.anchor_at,
               next_due_at = excluded.next_due_at, updated_at = excluded.updated_at",
        )
        .bind(app)
        .bind(&s.spec.name)
        .bind(&spec)
        .bind(now)
        .bind(s.next_due_at)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

pub async fn list(pool: &DbPool) -> Result<Vec<ScheduleRow>, StoreError> {
    let rows = crate::db::query(&format!(
        "SELECT {COLUMNS} FROM schedules s ORDER BY s.app, s.name"
    ))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(row).collect()
}

pub async fn due(pool: &DbPool, now: UnixMillis) -> Result<Vec<ScheduleRow>, StoreError> {
    let rows = crate::db::query(&format!(
        "SELECT {COLUMNS} FROM schedules s WHERE s.paused = 0 AND s.next_due_at <= $1 ORDER BY s.next_due_at"
    ))
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(row).collect()
}

async fn load(conn: &mut Conn, app: &str, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
    let r = crate::db::query(&format!(
        "SELECT {COLUMNS} FROM schedules s WHERE s.app = $1 AND s.name = $2{LOCK_SCHEDULE}"
    ))
    .bind(app)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    r.as_ref().map(row).transpose()
}

pub async fn fire(conn: &mut Conn, p: ScheduleFire) -> Result<FireOutcome, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let Some(schedule) = load(&mut tx, &p.app, &p.name).await? else {
        return Err(StoreError::not_found(
            Missing::Schedule,
            format!("no schedule {}.{}", p.app, p.name),
        ));
    };
    if !p.manual && schedule.next_due_at != Some(p.expected_due_at) {
        // Another server, or this one before a restart, moved past this due time.
        return Ok(FireOutcome::AlreadyFired);
    }
    for missed in &p.missed {
        crate::db::query(
            "INSERT INTO schedule_firings (app, schedule, due_at, outcome, recorded_at) VALUES ($1, $2, $3, 'missed', $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&p.app)
        .bind(&p.name)
        .bind(missed)
        .bind(p.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    let overlapping = schedule.spec.overlap == Overlap::Skip
        && schedule.last_call_state.is_some_and(|s| !s.is_terminal());
    let (outcome, call) = if overlapping {
        ("skipped", None)
    } else {
        let inserted = crate::calls::insert(&mut tx, p.call.clone()).await?;
        let call = match inserted {
            CallInserted::Created(c) | CallInserted::Existing(c) => c,
        };
        (if p.manual { "triggered" } else { "fired" }, Some(call))
    };
    let recorded = crate::db::query(
        "INSERT INTO schedule_firings (app, schedule, due_at, outcome, call_id, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(&p.app)
    .bind(&p.name)
    .bind(p.due_at)
    .bind(outcome)
    .bind(call.as_ref().map(|c| c.id.to_string()))
    .bind(p.now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    if recorded == 0 {
        // Fired before: undo the call this attempt made.
        return Ok(FireOutcome::AlreadyFired);
    }
    if p.manual {
        if let Some(c) = &call {
            crate::db::query("UPDATE schedules SET last_call_id = $3 WHERE app = $1 AND name = $2")
                .bind(&p.app)
                .bind(&p.name)
                .bind(c.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
    } else {
        crate::db::query(
            "UPDATE schedules SET next_due_at = $3, last_due_at = $4, last_call_id = COALESCE($5, last_call_id)
             WHERE app = $1 AND name = $2",
        )
        .bind(&p.app)
        .bind(&p.name)
        .bind(p.next_due_at)
        .bind(p.due_at)
        .bind(call.as_ref().map(|c| c.id.to_string()))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(match call {
        Some(c) => FireOutcome::Fired(Box::new(c)),
        None => FireOutcome::Skipped,
    })
}

pub async fn pause(conn: &mut Conn, p: SchedulePause) -> Result<Option<ScheduleRow>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    if p.paused {
        crate::db::query("UPDATE schedules SET paused = 1, updated_at = $3 WHERE app = $1 AND name = $2")
            .bind(&p.app)
            .bind(&p.name)
            .bind(p.now)
            .execute(&mut *tx)
            .await
    } else {
        // Due times that passed while paused are not fired late: the schedule resumes from now.
        crate::db::query("UPDATE schedules SET paused = 0, next_due_at = $4, updated_at = $3 WHERE app = $1 AND name = $2 AND paused = 1")
            .bind(&p.app)
            .bind(&p.name)
            .bind(p.now)
            .bind(p.next_due_at)
            .execute(&mut *tx)
            .await
    }
    .map_err(db_err)?;
    let schedule = load(&mut tx, &p.app, &p.name).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(schedule)
}

pub async fn reschedule(conn: &mut Conn, p: ScheduleReschedule) -> Result<bool, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let set = crate::db::query(
        "UPDATE schedules SET next_due_at = $4, updated_at = $5, anchor_at = COALESCE($6, anchor_at)
         WHERE app = $1 AND name = $2 AND next_due_at IS NOT DISTINCT FROM $3",
    )
    .bind(&p.app)
    .bind(&p.name)
    .bind(p.expected_due_at)
    .bind(p.next_due_at)
    .bind(p.now)
    .bind(p.anchor_at)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    if set > 0 {
        if let Some(after) = p.forget_firings_after {
            // Due times the clock went back over come again: their earlier firings leave the
            // history, so that each fires again (a due time fires once per record).
            crate::db::query(
                "DELETE FROM schedule_firings WHERE app = $1 AND schedule = $2 AND due_at > $3",
            )
            .bind(&p.app)
            .bind(&p.name)
            .bind(after)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(set > 0)
}

pub async fn firings(
    pool: &DbPool,
    app: &str,
    name: &str,
    limit: u32,
) -> Result<Vec<FiringRow>, StoreError> {
    let rows = crate::db::query(
        "SELECT due_at, outcome, call_id FROM schedule_firings WHERE app = $1 AND schedule = $2 ORDER BY due_at DESC LIMIT $3",
    )
    .bind(app)
    .bind(name)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok(FiringRow {
                due_at: r.try_get("due_at").map_err(db_err)?,
                outcome: r.try_get("outcome").map_err(db_err)?,
                call_id: r
                    .try_get::<Option<String>, _>("call_id")
                    .map_err(db_err)?
                    .map(|c| call_id(&c))
                    .transpose()?,
            })
        })
        .collect()
}

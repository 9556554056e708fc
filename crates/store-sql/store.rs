//! The [`Store`] implementation, written once for both backends: each backend supplies
//! `Backend` (its store type) with `read` (runs a read function of the shared SQL on a read
//! connection or the pool), `write` (runs a write in a transaction, answering once it is
//! durable), `insert_call` (a spawn, which a backend may write together with others),
//! `write_lease` (a write whose loss in a power cut only sends inputs back to the
//! queue, which a backend may commit without waiting for the disk), `lease_inputs` and
//! `complete_inputs` (a worker's lease and its batch of results, which a backend may write
//! together with other workers'), `functions` (a
//! [`FunctionCache`], enabled where no other process deploys), and the three things only a
//! shared database has: `subscribe` (wake-ups from other servers), `lead` and `clock`.

use async_trait::async_trait;
use hopper_core::api::Lease;
use hopper_core::{CallId, WorkerId};
use hopper_store::*;

use crate::{apps, blobs, calls, inputs, schedules, secrets, snapshots, stats, workers, Backend};

#[async_trait]
impl Store for Backend {
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        self.subscribe()
    }

    fn connections(&self) -> Option<(u32, u32)> {
        self.pool_connections()
    }

    async fn database_now(&self) -> Result<Option<hopper_core::UnixMillis>, StoreError> {
        self.clock().await
    }

    async fn leader_try(&self, role: &str) -> Result<bool, StoreError> {
        self.lead(role).await
    }

    async fn app_deploy(&self, params: AppDeploy) -> Result<AppRow, StoreError> {
        let deployed = self
            .write(move |conn| Box::pin(apps::deploy(conn, params.clone())))
            .await;
        self.functions.clear();
        deployed
    }

    async fn app_list(&self) -> Result<Vec<AppRow>, StoreError> {
        self.read(move |db| Box::pin(async move { apps::list(db).await }))
            .await
    }

    async fn function_find(&self, params: FunctionFind) -> Result<Vec<FunctionRow>, StoreError> {
        let generation = match self.functions.get(&params) {
            Ok(rows) => return Ok(rows),
            Err(generation) => generation,
        };
        let asked = params.clone();
        let rows = self
            .read(move |db| Box::pin(async move { apps::function_find(db, asked).await }))
            .await?;
        self.functions.keep(generation, &params, &rows);
        Ok(rows)
    }

    async fn function_versions(
        &self,
        function: &FunctionKey,
        limit: u32,
    ) -> Result<Vec<FunctionVersionRow>, StoreError> {
        let function = function.to_owned();
        self.read(move |db| {
            Box::pin(async move { apps::function_versions(db, &function, limit).await })
        })
        .await
    }

    async fn call_insert(&self, params: CallInsert) -> Result<CallInserted, StoreError> {
        self.insert_call(params).await
    }

    async fn call_insert_many(
        &self,
        params: Vec<CallInsert>,
    ) -> Result<Vec<CallInserted>, StoreError> {
        self.write(move |conn| Box::pin(calls::insert_many(conn, params.clone())))
            .await
    }

    async fn call_get(&self, id: &CallId) -> Result<Option<CallRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| Box::pin(async move { calls::get(db, &id).await }))
            .await
    }

    async fn call_list(&self, params: CallList) -> Result<Vec<CallRow>, StoreError> {
        self.read(move |db| Box::pin(async move { calls::list(db, params).await }))
            .await
    }

    async fn call_cancel(&self, params: CallCancel) -> Result<Option<CallRow>, StoreError> {
        self.write(move |conn| Box::pin(calls::cancel(conn, params.clone())))
            .await
    }

    async fn call_prune_finished(&self, params: CallPrune) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(calls::prune(conn, params.clone())))
            .await
    }

    async fn input_append(&self, params: InputAppend) -> Result<CallRow, StoreError> {
        self.write(move |conn| Box::pin(calls::append(conn, params.clone())))
            .await
    }

    async fn input_results(&self, params: InputResults) -> Result<Vec<InputResultRow>, StoreError> {
        self.read(move |db| Box::pin(async move { calls::results(db, params).await }))
            .await
    }

    async fn function_backlog(&self, now: i64) -> Result<Vec<FunctionBacklog>, StoreError> {
        self.read(move |db| Box::pin(async move { calls::backlog(db, now).await }))
            .await
    }

    async fn function_stats(&self, params: StatsList) -> Result<Vec<FunctionStatsRow>, StoreError> {
        self.read(move |db| Box::pin(async move { stats::list(db, params).await }))
            .await
    }

    async fn input_get(
        &self,
        call_id: &CallId,
        index: i64,
    ) -> Result<Option<InputRow>, StoreError> {
        let call_id = call_id.to_owned();
        self.read(move |db| Box::pin(async move { inputs::get(db, &call_id, index).await }))
            .await
    }

    async fn input_failed_list(
        &self,
        params: FailedInputList,
    ) -> Result<Vec<FailedInputRow>, StoreError> {
        self.read(move |db| Box::pin(async move { inputs::failed_list(db, params).await }))
            .await
    }

    async fn rerun_list(&self, calls: &[CallId]) -> Result<Vec<RerunRow>, StoreError> {
        let calls = calls.to_owned();
        self.read(move |db| Box::pin(async move { inputs::rerun_list(db, &calls).await }))
            .await
    }

    async fn input_first_failed(&self, call_id: &CallId) -> Result<Option<InputRow>, StoreError> {
        let call_id = call_id.to_owned();
        self.read(move |db| Box::pin(async move { inputs::first_failed(db, &call_id).await }))
            .await
    }

    async fn input_first_many(&self, calls: &[CallId]) -> Result<Vec<InputRow>, StoreError> {
        let calls = calls.to_owned();
        self.read(move |db| Box::pin(async move { inputs::first_many(db, &calls).await }))
            .await
    }

    async fn input_lease_available(&self, params: InputLease) -> Result<LeaseBatch, StoreError> {
        // Each function's limits as its current version has them (the function cache: on
        // PostgreSQL a deploy through another server is seen within a second).
        let mut limits = Vec::new();
        for function in &params.functions {
            let found = self
                .function_find(FunctionFind {
                    app: Some(function.app.clone()),
                    function: function.function.clone(),
                })
                .await?;
            if let Some(row) = found.into_iter().find(|r| r.spec.limits.any()) {
                limits.push((function.clone(), row.spec.limits));
            }
        }
        self.lease_inputs(params, limits).await
    }

    async fn limits_state(&self, params: LimitsRead) -> Result<LimitsState, StoreError> {
        self.read(move |db| Box::pin(crate::limits::state(db, params)))
            .await
    }

    async fn input_next_due(&self, functions: &[FunctionKey]) -> Result<Option<i64>, StoreError> {
        let functions = functions.to_owned();
        self.read(move |db| Box::pin(async move { inputs::next_due(db, &functions).await }))
            .await
    }

    async fn input_complete_many(
        &self,
        params: InputCompleteMany,
    ) -> Result<Vec<CompletionRow>, StoreError> {
        self.complete_inputs(params).await
    }

    async fn lease_heartbeat(&self, params: LeaseHeartbeat) -> Result<Vec<Lease>, StoreError> {
        self.write_lease(move |conn| Box::pin(inputs::heartbeat(conn, params.clone())))
            .await
    }

    async fn lease_rescue_expired(&self, params: LeaseRescue) -> Result<RescueReport, StoreError> {
        self.write(move |conn| Box::pin(inputs::rescue_expired(conn, params.clone())))
            .await
    }

    async fn lease_extend_all(&self, params: LeaseExtend) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(inputs::extend_all(conn, params.clone())))
            .await
    }

    async fn time_shift(&self, params: TimeShift) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(inputs::time_shift(conn, params.clone())))
            .await
    }

    async fn attempt_list(&self, params: AttemptList) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(move |db| Box::pin(async move { inputs::attempt_list(db, params).await }))
            .await
    }

    async fn log_append_many(&self, lines: LogAppend) -> Result<(), StoreError> {
        self.write(move |conn| Box::pin(workers::log_append_many(conn, lines.clone())))
            .await
    }

    async fn log_list(&self, params: LogList) -> Result<Vec<LogRow>, StoreError> {
        self.read(move |db| Box::pin(async move { workers::log_list(db, params).await }))
            .await
    }

    async fn worker_register(&self, params: WorkerRegisterParams) -> Result<(), StoreError> {
        self.write(move |conn| Box::pin(workers::register(conn, params.clone())))
            .await
    }

    async fn worker_deregister(&self, params: WorkerDeregister) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(inputs::worker_deregister(conn, params.clone())))
            .await
    }

    async fn worker_touch(&self, id: &WorkerId, now: i64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write_lease(move |conn| {
            let id = id.clone();
            Box::pin(async move { workers::touch(conn, &id, now).await })
        })
        .await
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.read(move |db| Box::pin(async move { schedules::list(db).await }))
            .await
    }

    async fn schedule_due(&self, now: i64) -> Result<Vec<ScheduleRow>, StoreError> {
        self.read(move |db| Box::pin(async move { schedules::due(db, now).await }))
            .await
    }

    async fn schedule_fire(&self, params: ScheduleFire) -> Result<FireOutcome, StoreError> {
        self.write(move |conn| Box::pin(schedules::fire(conn, params.clone())))
            .await
    }

    async fn schedule_reschedule(&self, params: ScheduleReschedule) -> Result<bool, StoreError> {
        self.write(move |conn| Box::pin(schedules::reschedule(conn, params.clone())))
            .await
    }

    async fn schema_version(&self) -> Result<SchemaVersion, StoreError> {
        let (applied, name) = self
            .read(move |db| Box::pin(async move { calls::schema_applied(db).await }))
            .await?;
        Ok(crate::migrate::schema(applied, name))
    }

    async fn schedule_pause(
        &self,
        params: SchedulePause,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        self.write(move |conn| Box::pin(schedules::pause(conn, params.clone())))
            .await
    }

    async fn schedule_firings(
        &self,
        app: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<FiringRow>, StoreError> {
        let (app, name) = (app.to_owned(), name.to_owned());
        self.read(move |db| {
            Box::pin(async move { schedules::firings(db, &app, &name, limit).await })
        })
        .await
    }

    async fn call_list_finished(&self, params: CallsFinished) -> Result<Vec<CallRow>, StoreError> {
        self.read(move |db| Box::pin(async move { calls::finished_since(db, params).await }))
            .await
    }

    async fn call_touch(
        &self,
        ids: Vec<CallId>,
        now: hopper_core::UnixMillis,
    ) -> Result<(), StoreError> {
        self.write(move |conn| Box::pin(calls::touch(conn, ids.clone(), now)))
            .await
    }

    async fn call_list_abandoned(
        &self,
        before: hopper_core::UnixMillis,
        limit: u32,
    ) -> Result<Vec<CallId>, StoreError> {
        self.read(move |db| Box::pin(calls::abandoned(db, before, limit)))
            .await
    }

    async fn setting_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |db| Box::pin(async move { calls::setting_get(db, &key).await }))
            .await
    }

    async fn setting_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |conn| Box::pin(calls::setting_put(conn, key.clone(), value.clone())))
            .await
    }

    async fn secret_put(&self, params: SecretPutParams) -> Result<SecretRow, StoreError> {
        self.write(move |conn| Box::pin(secrets::put(conn, params.clone())))
            .await
    }

    async fn secret_list(&self) -> Result<Vec<SecretRow>, StoreError> {
        self.read(move |db| Box::pin(async move { secrets::list(db).await }))
            .await
    }

    async fn secret_get_many(&self, names: &[String]) -> Result<Vec<SecretRow>, StoreError> {
        let names = names.to_owned();
        self.read(move |db| Box::pin(async move { secrets::get_many(db, &names).await }))
            .await
    }

    async fn secret_delete(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |conn| Box::pin(secrets::delete(conn, name.clone())))
            .await
    }

    async fn snapshot_put(&self, params: SnapshotPut) -> Result<bool, StoreError> {
        self.write(move |conn| Box::pin(snapshots::put(conn, params.clone())))
            .await
    }

    async fn snapshot_info(&self, hash: &str) -> Result<Option<SnapshotRow>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |db| Box::pin(async move { snapshots::info(db, &hash).await }))
            .await
    }

    async fn snapshot_get(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |db| Box::pin(async move { snapshots::get(db, &hash).await }))
            .await
    }

    async fn snapshot_prune(&self, params: SnapshotPrune) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(snapshots::prune(conn, params.clone())))
            .await
    }

    async fn worker_list(&self, seen_after: i64) -> Result<Vec<WorkerRow>, StoreError> {
        self.read(move |db| Box::pin(async move { workers::list(db, seen_after).await }))
            .await
    }

    async fn blob_chunk_put(&self, params: BlobChunk) -> Result<(), StoreError> {
        // Without waiting for the disk: a chunk lost in a power cut only fails an upload that
        // was never acknowledged, and the upload's last write (`blob_finish`, durable) makes
        // every chunk before it durable too (one log, flushed in order).
        self.write_lease(move |conn| Box::pin(blobs::chunk_put(conn, params.clone())))
            .await
    }

    async fn blob_discard(&self, upload: &str) -> Result<(), StoreError> {
        let upload = upload.to_owned();
        self.write(move |conn| Box::pin(blobs::discard(conn, upload.clone())))
            .await
    }

    async fn blob_finish(&self, params: BlobFinish) -> Result<bool, StoreError> {
        self.write(move |conn| Box::pin(blobs::finish(conn, params.clone())))
            .await
    }

    async fn blob_info(&self, digest: &str) -> Result<Option<BlobRow>, StoreError> {
        let digest = digest.to_owned();
        self.read(move |db| Box::pin(async move { blobs::info(db, &digest).await }))
            .await
    }

    async fn blob_chunk(&self, digest: &str, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let digest = digest.to_owned();
        self.read(move |db| Box::pin(async move { blobs::chunk(db, &digest, seq).await }))
            .await
    }

    async fn blob_object_begin(&self, location: &str, now: i64) -> Result<(), StoreError> {
        let location = location.to_owned();
        self.write(move |conn| Box::pin(blobs::object_begin(conn, location.clone(), now)))
            .await
    }

    async fn blob_objects_due(&self, before: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        self.read(move |db| Box::pin(async move { blobs::objects_due(db, before, limit).await }))
            .await
    }

    async fn blob_object_gone(&self, location: &str) -> Result<(), StoreError> {
        let location = location.to_owned();
        self.write(move |conn| Box::pin(blobs::object_gone(conn, location.clone())))
            .await
    }

    async fn blob_claim(
        &self,
        call_id: &CallId,
        digests: Vec<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        let call_id = call_id.clone();
        self.write(move |conn| Box::pin(blobs::claim(conn, call_id.clone(), digests.clone(), now)))
            .await
    }

    async fn blob_prune(&self, params: BlobPrune) -> Result<u64, StoreError> {
        self.write(move |conn| Box::pin(blobs::prune(conn, params.clone())))
            .await
    }
}

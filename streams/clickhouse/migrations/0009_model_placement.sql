-- Where each served model's nodes run (streams.scoring.placement, from ONNX Runtime's
-- profile of the session's warm-up): compute nodes and share of node time per execution
-- provider, and whether every operator of its graph has a CUDA kernel (with those that
-- lack one). `provider` says CUDAExecutionProvider only when every compute node runs on
-- CUDA, and a partial placement reads e.g. 'CUDAExecutionProvider (partial: 3 of 12 nodes
-- on CPU)'. Rows written before this migration keep the defaults (empty maps, false).
alter table {database}.models
    add column if not exists nodes_by_provider Map(String, UInt32) after worker_id;

alter table {database}.models
    add column if not exists compute_share_by_provider Map(String, Float64)
    after nodes_by_provider;

alter table {database}.models
    add column if not exists cuda_capable Bool default false after compute_share_by_provider;

alter table {database}.models
    add column if not exists without_cuda_kernel Array(String) after cuda_capable;

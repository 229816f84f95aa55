"""What each field of ``sparsity_summary.json`` means: the one description, read by the documentation's reference page.

``FIELDS`` maps a field to its meaning. Nested fields are dotted (``compute_fractions.dense``); the fields of the
objects in a list are written ``list[].field`` (``eval_history[].loss``). A field whose value is a mapping with keys
of its own (``model.params_by_kind``: kind -> count) is one entry. ``SOME_RUNS`` names the fields written only by
some runs, with their sub-fields. ``tests/test_docs.py`` checks that a real run's summary holds exactly these fields
(``SOME_RUNS`` aside), so a field written without a meaning here fails the tests.

The summary is written by process 0 at the end of every run, also one that stops early or fails
(``sparsity.maxtext.loop``); a run that fails where its train state cannot be read writes the subset that
``loop.minimal_failure_summary`` knows.
"""

from __future__ import annotations

FIELDS: dict[str, str] = {
    # How the run went.
    "run_name": "MaxText's ``run_name``.",
    "end_status": "How the run ended: ``completed`` (every configured step trained: the only end that is a result), "
                  "``data_exhausted``, ``target_eval_loss`` (MaxText's early stop), ``preempted`` (SIGTERM), "
                  "``interrupted`` (SIGINT), ``diverged`` (a NaN or infinite loss) or ``failed`` "
                  "(``sparsity.maxtext.status``; docs/reference/run_endings.md).",
    "exit_code": "The exit code of ``MaxText/train.py`` for this end (0, 143 preempted, 130 interrupted, 1 diverged "
                 "or failed, or the code of a ``SystemExit`` inside MaxText's loop).",
    "error": "For ``failed``: the exception's type, its message (cut short) and the file and line it was raised at; "
             "for ``diverged``: the step and loss; else null.",
    "diverged_at_step": "For ``diverged``: the step whose training loss was NaN or infinite; else null.",
    "last_finite_loss": "The last finite training loss read before a divergence (null if none was read).",
    "last_finite_loss_step": "The step of ``last_finite_loss``.",
    "steps": "Configured training steps.",
    "steps_trained": "Steps actually trained.",
    "stopped_early": "Whether training stopped before ``steps``.",
    "stop_reason": "MaxText's message when it stopped early (the data ran out, ``target_eval_loss`` reached, ...).",
    "data_ran_out": "True only for a real end of the training data (``end_status`` ``data_exhausted``).",
    "target_reached": "Whether the final masks keep what the schedule's last event keeps (false when training stopped "
                      "before the last event; the run then prints a warning).",
    # The schedule.
    "target_sparsity": "The target sparsity (``auto`` resolved).",
    "sparsity_schedule": "The schedule's name (``geometric``, ``cubic``, ``linear``, ``one_shot``).",
    "prune_steps": "The steps of the pruning events.",
    "kept_after_events": "Prunable weights kept after each event (what the scope keeps: per-tensor rounding differs "
                         "from global by a few weights).",
    "schedule_split": "``compute`` (the step fractions were derived from the compute fractions) or ``steps`` (set "
                      "explicitly).",
    "prune_start_fraction": "The fraction of ``steps`` of the first event, as used.",
    "prune_end_fraction": "The fraction of ``steps`` of the last event, as used.",
    # Counts.
    "prunable_params": "Prunable weights (the linear layers chosen by ``prunable_params``, every expert included).",
    "non_prunable_params": "Trainable parameters that are not prunable (embeddings, norms, exempted weights).",
    "total_params": "All trainable parameters.",
    "final_sparsity": "Fraction of the prunable weights that are zero in the final masks (counted, not looked up).",
    "final_active_params": "Non-zero trainable parameters at the end.",
    "final_kept_params": "Prunable weights the final masks keep (counted from the masks).",
    "avg_active_params": "N_avg: the mean over the steps trained of the active (non-zero) trainable parameters.",
    "avg_active_prunable_params": "The same mean over the prunable weights only.",
    # Tokens and compute.
    "tokens_per_step": "Global batch x sequence length.",
    "tokens": "Tokens trained: ``steps_trained`` x ``tokens_per_step`` (padding included).",
    "target_tokens": "Real (unpadded) target tokens trained: the sum of MaxText's per-step ``total_weights`` over "
                     "every step, also those before a resume (null if a resumed run cannot tell them).",
    "effective_flops": "Sum over the steps trained of 6 x active prunable weights x tokens per step (embeddings and "
                       "norms not counted).",
    "dense_flops": "6 x prunable weights x tokens: the same run trained dense.",
    "compute_fractions": "The shares of ``effective_flops`` spent in each phase over the steps trained.",
    "compute_fractions.dense": "Before the first event.",
    "compute_fractions.pruning": "From the first event to the last.",
    "compute_fractions.recovery": "After the last event (fixed mask).",
    # Losses.
    "final_train_loss": "The last trained step's loss.",
    "final_eval_loss": "The loss of the final weights over MaxText's eval data; null without evaluation.",
    "final_eval_step": "The train step that ``final_eval_loss`` follows.",
    "eval_history": "Every evaluation of the run, in order.",
    "eval_history[].step": "The train step the evaluation follows.",
    "eval_history[].tokens": "Tokens trained by then: (step + 1) x ``tokens_per_step``.",
    "eval_history[].loss": "MaxText's ``eval/avg_loss``.",
    "recovery": "Prune and recover (a run from ``load_parameters_path`` with an event, or none, at step 0 and "
                "evaluation configured); null otherwise.",
    "recovery.loaded_from": "The ``load_parameters_path`` the run started from.",
    "recovery.pruned": "Whether an event pruned the loaded weights at step 0 (false: the unpruned control).",
    "recovery.loss_before_pruning": "Eval loss of the loaded weights (the P2 law's L0).",
    "recovery.loss_after_pruning": "Eval loss right after the step-0 event, before any training (L0 when not "
                                   "pruned).",
    # The model.
    "model": "The model family and its parameters by kind (``sparsity.maxtext.families``).",
    "model.decoder_block": "MaxText's ``decoder_block``.",
    "model.param_scan_axis": "The axis of stacked layers in the kernels (MaxText's ``param_scan_axis``).",
    "model.params_by_kind": "Trainable parameters by kind: attention, mlp, experts, shared_experts, output, router, "
                            "embedding, norm, ...",
    "model.prunable_params_by_kind": "Prunable weights by kind.",
    "model.prunable_tensors": "The paths of the pruned parameters.",
    "model.moe": "Mixtures of experts only: the parameters one token uses.",
    "model.moe.num_experts": "Routed experts per layer.",
    "model.moe.experts_per_token": "Experts each token is routed to (k).",
    "model.moe.routed_expert_params": "Parameters of the routed experts, all of them.",
    "model.moe.active_params_per_token": "Parameters one token's forward pass uses before pruning.",
    "model.moe.routed_expert_active_params": "Non-zero parameters of the routed experts at the end.",
    "model.moe.final_active_params_per_token": "Non-zero parameters one token uses at the end: non-expert active + "
                                               "k/E of the routed experts' active (the expectation under uniform "
                                               "routing).",
    # Settings the run used (what collect and report group runs by: sparsity.maxtext.loop.RUN_SETTINGS).
    "dense_compute_fraction": "The key's value.",
    "pruning_compute_fraction": "The key's value.",
    "pruning_interval": "The key's value: steps between events.",
    "pruning_scope": "The key's value: ``global`` or ``per_tensor``.",
    "pruning_score": "The key's value: ``magnitude`` or ``random``.",
    "pruning_structure": "The key's value: ``unstructured`` or ``N:M``.",
    "init_mask_from_zeros": "The key's value (sparse fine-tuning with a fixed mask).",
    "learning_rate": "MaxText's ``learning_rate``.",
    "per_device_batch_size": "MaxText's ``per_device_batch_size``.",
    "global_batch_size_to_train_on": "The global batch (sequences per step).",
    "max_target_length": "MaxText's sequence length.",
}

# Written only by some runs: a mixture of experts (``model.moe``), prune and recover (``recovery``'s fields; other
# runs write ``recovery: null``).
SOME_RUNS = ("model.moe", "recovery.")

__all__ = ["FIELDS", "SOME_RUNS"]

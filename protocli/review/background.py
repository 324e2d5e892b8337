"""Work the review app does in threads: suspicion scores and the masking effect -> the state and the
status line.

Inputs: the app's state (its push folder inside a run) and `_deliver` (call_from_thread that gives
up quietly when the app is closing). Torch is imported only inside these threads, so neither the
first screen nor a key ever waits for it; a fake run without a model simply shows no effect.
"""

from __future__ import annotations

from functools import partial

from textual.worker import get_current_worker


def quiet() -> None:
    """No progress bars or info lines from stage code: the terminal belongs to the app now."""
    from protocli.console import QUIET

    QUIET["on"] = True


class BackgroundWork:
    """Mixin of ReviewApp: needs self.state, self.run_dir, self.effect, self.effect_text,
    self._effect_for, self.redraw, self.run_worker and self._deliver."""

    def start_suspicion(self) -> None:
        if self._suspicion_started:  # computed once (started again only after a failure)
            return
        self._suspicion_started = True
        quiet()
        self.run_worker(self._load_suspicion, thread=True, group="suspicion", exclusive=True, exit_on_error=False)

    def _load_suspicion(self) -> None:
        from protocli.console import Cancelled, cancellable
        from protocli.suspicion import ensure

        worker = get_current_worker()
        try:
            with cancellable(lambda: worker.is_cancelled):  # quitting must not wait for it
                doc = ensure(self.run_dir, self.state.push_dir, len(self.state.protos))
        except Cancelled:
            return
        except Exception as e:  # no trained run around this push, no latents: say so, keep going
            self._deliver(self._suspicion_failed, f"suspicion scores unavailable: {e}")
            return
        self._deliver(self._suspicion_ready, doc)

    def _suspicion_ready(self, doc: dict) -> None:
        self.state.set_suspicion(doc)
        self.redraw()

    def _suspicion_failed(self, text: str) -> None:
        if self.state.want_suspicion:  # said only to whoever asked for the order, and tried again then
            self.state.message = text
        self.state.want_suspicion = False
        self._suspicion_started = False
        self.redraw()

    def start_effect(self) -> None:
        """Load the model and latents for the masking effect, only for a run whose model holds this push."""
        if self.state.read_only or not (self.run_dir / "model.safetensors").exists():
            return
        quiet()
        self.run_worker(self._load_effect, thread=True, group="effect-load", exit_on_error=False)

    def _load_effect(self) -> None:
        from protocli.console import cancellable

        worker = get_current_worker()
        try:
            from protocli.effect import MaskEffect

            with cancellable(lambda: worker.is_cancelled):  # quitting must not wait for it
                effect = MaskEffect(self.run_dir, self.state.push_dir)
        except Exception:  # e.g. the run was revised since this push: the effect would be meaningless
            return
        self._deliver(self._effect_ready, effect)

    def _effect_ready(self, effect) -> None:
        self.effect = effect
        self.update_effect()

    def update_effect(self) -> None:
        if self.effect is None:
            return
        rejected = self.state.rejected_ids()
        if rejected == self._effect_for:
            return
        self._effect_for = rejected
        self.run_worker(partial(self._compute_effect, rejected), thread=True, group="effect", exclusive=True,
                        exit_on_error=False)

    def _compute_effect(self, rejected: list[int]) -> None:
        from protocli.effect import describe

        worker = get_current_worker()
        e = self.effect(rejected, cancelled=lambda: worker.is_cancelled)
        if e is not None and not worker.is_cancelled:
            self._deliver(self._show_effect, describe(e))

    def _show_effect(self, text: str) -> None:
        self.effect_text = text
        self.redraw()

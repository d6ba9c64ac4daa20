"""Speculative decoding over the Session protocol: a draft model, prompt lookup, or multi-projection heads propose; the target verifies.

``proposers``: where proposals come from; ``scheduler``: the loop (static batches and
continuous batching) whose greedy output equals plain decoding of the same target.
"""
from runtime.speculative.proposers import DraftModel, PromptLookup, Projections, Proposer, lookup
from runtime.speculative.scheduler import SpeculativeScheduler, check_greedy

SCHEMES = ("none", "draft", "pld", "multiproj")

__all__ = ["DraftModel", "PromptLookup", "Projections", "Proposer", "SpeculativeScheduler", "SCHEMES", "check_greedy", "lookup"]

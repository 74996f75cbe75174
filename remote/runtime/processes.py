"""Processes on the host, told apart from later ones with the same pid by their start time."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Owner:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    started: float

    @classmethod
    def current(cls) -> Owner:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Owner:
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return abs(process.create_time() - self.started) < 0.5 and process.status() != "zombie"
        except psutil.Error:
            return False

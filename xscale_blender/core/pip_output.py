"""pip's output during Set Up Backend (backend_setup.py): its lines as progress and short messages,
and what to tell the user when pip fails (standard library only, no bpy)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

NEEDED_GB = {"cpu": 2.0, "cuda": 8.0}      # environment + pip's download cache, with some room


class PipProgress:
    """Turns pip's output lines into a fraction of its work and short messages."""

    def __init__(self, install_note: str = "") -> None:
        self.install_note = install_note     # added to "installing N packages"
        self.fraction = 0.0
        self.collected = 0
        self.current = ""
        self.download_start = 0.0
        self.tail: list[str] = []

    def feed(self, line: str) -> Optional[str]:
        """The message to show for `line`, or None; updates `fraction`."""
        line = line.rstrip()
        if not line.strip():
            return None
        self.tail = (self.tail + [line])[-60:]
        m = re.match(r"\s*Progress (\d+) of (\d+)", line)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            if total > 0:      # each download covers part of what is left up to 75 %
                self._advance(self.download_start + (0.75 - self.download_start) * 0.6 * done / total)
                digits = 1 if total < 1e7 else 0
                return f"downloading {self.current}: {done / 1e6:.{digits}f} of {total / 1e6:.{digits}f} MB"
            return None
        m = re.match(r"\s*(Collecting|Processing) (\S+)", line)
        if m:
            self.collected += 1
            self._advance(min(0.05 + 0.02 * self.collected, 0.7))
            name = m.group(2).rstrip("/\\")
            if m.group(1) == "Processing":      # a local file or folder
                name = re.split(r"[/\\]", name)[-1].split("-")[0]
            return f"collecting {re.split(r'[<>=!~;[ ]', name)[0]}"
        m = re.match(r"\s*Downloading (\S+)(?: \((.*)\))?", line)
        if m:
            url = m.group(1).rstrip("/")
            self.current = url.rsplit("/", 1)[-1].split("-")[0] or url
            self.download_start = self.fraction
            return f"downloading {self.current}" + (f" ({m.group(2)})" if m.group(2) else "")
        if re.match(r"\s*(Building wheel|Preparing metadata|Getting requirements|Installing build dep)", line):
            return line.strip().rstrip(".").lower()
        m = re.match(r"\s*Installing collected packages: (.*)", line)
        if m:
            self._advance(0.8)
            n = len(m.group(1).split(","))
            return f"installing {n} package{'s' if n != 1 else ''}" + (f" ({self.install_note})" if self.install_note else "")
        if line.startswith("Successfully installed"):
            self._advance(1.0)
        return None

    def _advance(self, fraction: float) -> None:
        self.fraction = max(self.fraction, fraction)


TLS = ("CERTIFICATE_VERIFY_FAILED", "SSLCertVerificationError", "certificate verify failed",
       "self signed certificate in certificate chain", "self-signed certificate in certificate chain")
NETWORK = ("Failed to establish a new connection", "Temporary failure in name resolution",
           "Name or service not known", "Network is unreachable", "Max retries exceeded", "Read timed out",
           "ConnectTimeoutError", "ProxyError", "SSLError", "Could not fetch URL", "NewConnectionError",
           "getaddrinfo failed", "No route to host", "Connection refused")


def diagnose(lines: list[str], what: str, folder: Path, python_version: str) -> str:
    """What to do about a failed pip or venv command, from its output."""
    text = "\n".join(lines)
    if "No space left on device" in text or "Errno 28" in text:
        return (f"{what} failed: the disk is full ({folder}). Free some space (the backend needs about "
                f"{NEEDED_GB['cpu']:.0f} GB, {NEEDED_GB['cuda']:.0f} GB with CUDA), then press Set Up Backend again.")
    if "Permission denied" in text or "Errno 13" in text:
        return (f"{what} failed: no permission to write in {folder}. Check the folder's permissions, then press "
                "Set Up Backend again.")
    if any(s in text for s in TLS):
        return (f"{what} failed: pip could not verify the package index's certificate (a proxy or firewall that "
                "inspects encrypted connections?). Save your organisation's certificate as a .pem file and set "
                "PIP_CERT (or SSL_CERT_FILE) to it before starting Blender, then press Set Up Backend again.")
    if any(s in text for s in NETWORK):
        return (f"{what} failed: pip could not reach the package index (no network?). Connect to the internet "
                "(behind a proxy: set HTTPS_PROXY before starting Blender), then press Set Up Backend again.")
    if re.search(r"No matching distribution found for torch|Could not find a version that satisfies the "
                 r"requirement torch", text):
        return (f"{what} failed: there is no torch package for Python {python_version} on this machine. Choose "
                "another Python (3.10 to 3.13) in the add-on preferences (Python for Setup) and press Set Up "
                "Backend again.")
    errors = [ln.strip() for ln in lines if ln.strip().startswith("ERROR")]
    last = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
    return f"{what} failed: {last} (the whole output is in {folder / 'setup.log'})"

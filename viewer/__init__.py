"""Browser viewer (viser): `recon view` (server.serve) and the live training view (live.LiveViewer)."""

"""Router workflow: the Lightning module and datamodule, `deferral train`, baselines, export."""

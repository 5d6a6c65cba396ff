from amelia_agents.models import Base
from amelia_common.migrations import run_env

run_env(Base.metadata)

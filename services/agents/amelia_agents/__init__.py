"""AgentService: agents, threads and durable runs of LangGraph workflows."""

--! Previous: sha1:37c32b039a310f23ad1e8f5c82a206f3b3ee9a87
--! Hash: sha1:abb7d0a097750cd87cce1afbf5ed303a0fe8f8e7
--! Message: task dependencies link only tasks the caller can see

-- Linking tasks needs the tasks themselves to be visible, not only a task permission.
drop policy if exists task_dependencies_write on crm.task_dependencies;
create policy task_dependencies_write on crm.task_dependencies for all
  using (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or (select crm.has_permission('tasks:create')))
         and exists (select 1 from crm.tasks t where t.id = task_dependencies.task_id))
  with check (organization_id = (select crm.current_org_id())
         and ((select crm.has_permission('tasks:update_all')) or (select crm.has_permission('tasks:create')))
         and exists (select 1 from crm.tasks t where t.id = task_dependencies.task_id)
         and exists (select 1 from crm.tasks t where t.id = task_dependencies.depends_on_task_id));

//! Tickets (access requests and held commands), keyed by number in tree `tickets`. Every change
//! is written with its audit event in one transaction; a change reads, decides and writes back
//! under the store's ticket lock.

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    ticket::Ticket,
};

use super::{Store, StoreError};

const TICKETS_TREE: &str = "tickets";

impl Store {
    fn ticket_tree(&self) -> Result<sled::Tree, StoreError> {
        self.tree(TICKETS_TREE)
    }

    fn encode_ticket(&self, t: &Ticket) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(t).map_err(|e| self.io(sled::Error::Unsupported(e.to_string())))
    }

    fn decode_ticket(&self, v: &[u8]) -> Result<Ticket, StoreError> {
        serde_json::from_slice(v).map_err(|e| {
            self.io(sled::Error::Unsupported(format!(
                "tree {TICKETS_TREE}: undecodable ticket: {e}"
            )))
        })
    }

    /// Numbers a new ticket (`make` builds it from its number) and stores it with the event
    /// `event` names for it.
    pub fn create_ticket(
        &self,
        make: impl FnOnce(u64) -> Ticket,
        event: impl FnOnce(&Ticket) -> AuditKind,
        actor: Actor,
    ) -> Result<(Ticket, AuditEvent), StoreError> {
        let _lock = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let tree = self.ticket_tree()?;
        let last = tree
            .last()
            .map_err(|e| self.io(e))?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let ticket = make(last + 1);
        let value = self.encode_ticket(&ticket)?;
        let kind = event(&ticket);
        let written =
            self.write_with_audit(&tree, &ticket.id.to_be_bytes(), Some(value), actor, kind)?;
        Ok((ticket, written))
    }

    pub fn ticket(&self, id: u64) -> Result<Option<Ticket>, StoreError> {
        self.ticket_tree()?
            .get(id.to_be_bytes())
            .map_err(|e| self.io(e))?
            .map(|v| self.decode_ticket(&v))
            .transpose()
    }

    /// Every ticket, oldest first.
    pub fn tickets(&self) -> Result<Vec<Ticket>, StoreError> {
        self.ticket_tree()?
            .iter()
            .map(|item| {
                let (_, v) = item.map_err(|e| self.io(e))?;
                self.decode_ticket(&v)
            })
            .collect()
    }

    /// Changes ticket `id` under the ticket lock: `change` edits it and names the audit event
    /// to write with it (`None`: nothing changed, nothing written). `Ok(Err)` carries the
    /// change's own refusal.
    pub fn update_ticket<E>(
        &self,
        id: u64,
        actor: Actor,
        change: impl FnOnce(&mut Ticket) -> Result<Option<AuditKind>, E>,
    ) -> Result<Option<Result<Ticket, E>>, StoreError> {
        let _lock = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut ticket) = self.ticket(id)? else {
            return Ok(None);
        };
        let kind = match change(&mut ticket) {
            Ok(Some(kind)) => kind,
            Ok(None) => return Ok(Some(Ok(ticket))),
            Err(e) => return Ok(Some(Err(e))),
        };
        let value = self.encode_ticket(&ticket)?;
        let tree = self.ticket_tree()?;
        self.write_with_audit(&tree, &id.to_be_bytes(), Some(value), actor, kind)?;
        Ok(Some(Ok(ticket)))
    }

    /// Marks ticket `id` told to its requester (no audit event: nothing was decided).
    pub fn ticket_told(&self, id: u64) -> Result<(), StoreError> {
        let _lock = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut ticket) = self.ticket(id)? else {
            return Ok(());
        };
        ticket.told = true;
        let value = self.encode_ticket(&ticket)?;
        self.ticket_tree()?
            .insert(id.to_be_bytes(), value)
            .map_err(|e| self.io(e))?;
        Ok(())
    }
}

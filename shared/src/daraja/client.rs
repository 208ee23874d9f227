//! Placeholder: replaced by the Daraja client work.
pub struct DarajaClient;
pub struct DarajaClientSettings;
pub enum TransactionType {
    PayBill,
    BuyGoods,
}
